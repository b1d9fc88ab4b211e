"""Subword text for OpenNMT-py from rnmt's tokenizer files, and back.

OpenNMT-py reads whitespace-separated tokens. The benchmark gives it the subwords of the
very tokenizer files `rnmt prepare` learnt, so both toolkits see the same vocabulary and
the same segmentation; its output is turned back into text with the same files.

  python subwords.py encode TOKENIZER.json < text > subwords
  python subwords.py decode TOKENIZER.json < subwords > text
"""

import sys

from tokenizers import Tokenizer


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in ("encode", "decode"):
        sys.exit("usage: subwords.py encode|decode TOKENIZER.json < in > out")
    mode, path = sys.argv[1], sys.argv[2]
    tokenizer = Tokenizer.from_file(path)
    out = sys.stdout
    for line in sys.stdin:
        line = line.rstrip("\n")
        if mode == "encode":
            tokens = tokenizer.encode(line, add_special_tokens=False).tokens
            if any(" " in t for t in tokens):
                sys.exit(f"a subword of {path} contains a space: OpenNMT-py cannot read it")
            out.write(" ".join(tokens) + "\n")
        else:
            # OpenNMT-py's <unk> (a subword it never saw in training) has no id: dropped.
            ids = [tokenizer.token_to_id(t) for t in line.split()]
            out.write(tokenizer.decode([i for i in ids if i is not None]) + "\n")


if __name__ == "__main__":
    main()
