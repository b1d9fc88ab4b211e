//! Hard alignments from attention, in the Pharaoh format of Moses and fast_align:
//! `i-j` pairs, 0-based, source position first, separated by spaces.
//!
//! Each target subword is aligned to the source subword it attended to most when it was
//! produced. A target subword whose strongest attention is on the source EOS is left
//! unaligned; the target EOS step is never aligned. Word alignments link word `i` and
//! word `j` when any of their subwords are linked; words are the whitespace-separated
//! pieces of the text (subwords that begin with a space begin a word).

/// Subword pairs `(source, target)` for a hypothesis' attention rows (one per scored
/// step, each over `src_len` subwords plus the source EOS), sorted by target position.
pub fn hard_alignment(
    attention: &[Vec<f32>],
    src_len: usize,
    tgt_len: usize,
) -> Vec<(usize, usize)> {
    attention
        .iter()
        .take(tgt_len)
        .enumerate()
        .filter_map(|(j, row)| {
            let (i, _) = super::argmax(row);
            ((i as usize) < src_len).then_some((i as usize, j))
        })
        .collect()
}

/// The word index of every subword, from the subwords' texts: a subword that starts
/// with whitespace starts a new word (unless no word has started yet).
pub fn word_index(pieces: &[String]) -> Vec<usize> {
    let mut word = 0;
    let mut started = false;
    pieces
        .iter()
        .map(|p| {
            if p.starts_with(char::is_whitespace) && started {
                word += 1;
            }
            started |= !p.trim().is_empty();
            word
        })
        .collect()
}

/// Word pairs from subword pairs, sorted and without repeats.
pub fn word_alignment(
    pairs: &[(usize, usize)],
    src_words: &[usize],
    tgt_words: &[usize],
) -> Vec<(usize, usize)> {
    let mut words: Vec<(usize, usize)> = pairs
        .iter()
        .map(|&(i, j)| (src_words[i], tgt_words[j]))
        .collect();
    words.sort_by_key(|&(i, j)| (j, i));
    words.dedup();
    words
}

/// `0-0 1-2 …`
pub fn pharaoh(pairs: &[(usize, usize)]) -> String {
    pairs
        .iter()
        .map(|(i, j)| format!("{i}-{j}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_each_target_to_its_strongest_source() {
        // Source: 2 subwords + EOS; target: 3 subwords + EOS step.
        let attention = vec![
            vec![0.1, 0.8, 0.1],
            vec![0.7, 0.2, 0.1],
            vec![0.1, 0.1, 0.8], // strongest on EOS: unaligned
            vec![0.5, 0.4, 0.1], // the EOS step: never aligned
        ];
        let pairs = hard_alignment(&attention, 2, 3);
        assert_eq!(pairs, vec![(1, 0), (0, 1)]);
        assert_eq!(pharaoh(&pairs), "1-0 0-1");
    }

    #[test]
    fn words_merge_subwords() {
        let pieces: Vec<String> = ["Der", " Hun", "d", " jagt", "."]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(word_index(&pieces), vec![0, 1, 1, 2, 2]);
        let leading: Vec<String> = [" A", " b"].iter().map(|s| s.to_string()).collect();
        assert_eq!(word_index(&leading), vec![0, 1]);
        let words = word_alignment(&[(1, 0), (2, 0), (0, 1)], &[0, 1, 1], &[0, 1]);
        assert_eq!(words, vec![(1, 0), (0, 1)]);
    }
}
