//! `rnmt translate` through the real binary, with the tiny model of
//! `translate_support` (trained once per test binary): one output line per input line in
//! order whatever the lines hold, files and positional sentences, JSON and n-best
//! output, alignments, attention plots, ensembles, and the errors of missing models.

mod translate_support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rand::SeedableRng;
use translate_support::{tiny_model, TinyModel};

fn rnmt() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rnmt"));
    // The test binary runs several of these at once on a small machine.
    cmd.args(["translate", "--threads", "1"]);
    cmd
}

/// Runs `cmd` with `stdin` as its input.
fn run_with_input(cmd: &mut Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rnmt runs");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn run(cmd: &mut Command) -> Output {
    run_with_input(cmd, b"")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("output is UTF-8")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: Output) -> Output {
    assert!(out.status.success(), "rnmt failed: {}", stderr(&out));
    out
}

/// The output lines (each ends with a newline, including the last).
fn lines(out: &Output) -> Vec<String> {
    let text = stdout(out);
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "unterminated output: {text:?}"
    );
    text.lines().map(str::to_string).collect()
}

fn model_arg(dir: &Path) -> [String; 2] {
    ["--model".into(), dir.display().to_string()]
}

/// Translations of `sentences` given as positional arguments, in reverse order (so the
/// batches sort them differently than a stdin run does), returned in input order.
fn reference_translations(tiny: &TinyModel, sentences: &[&str], beam: &str) -> Vec<String> {
    let reversed: Vec<&str> = sentences.iter().rev().copied().collect();
    let out = ok(run(rnmt()
        .args(model_arg(&tiny.dir))
        .args(["--beam", beam])
        .args(&reversed)));
    let mut got = lines(&out);
    assert_eq!(got.len(), sentences.len(), "{}", stdout(&out));
    got.reverse();
    got
}

#[test]
fn one_output_line_per_input_line_in_order() {
    let tiny = tiny_model();
    let s: Vec<&str> = tiny.sentences[..6].iter().map(String::as_str).collect();
    let expected = reference_translations(tiny, &s, "3");
    // Far more than the default limit of 250 subwords.
    let long = vec![s[0]; 60].join(" ");
    let garbage: &[u8] = b"\xff\xfe\x00\x80 Hund \xc3\x28 \x9f\x92";
    let crlf = format!("  {}\r", s[3]);
    let cases: [(&[u8], Option<&str>); 10] = [
        (s[0].as_bytes(), Some(&expected[0])),
        (b"", Some("")),
        (s[1].as_bytes(), Some(&expected[1])),
        (b"   \t ", Some("")),
        (long.as_bytes(), None),
        (s[2].as_bytes(), Some(&expected[2])),
        (garbage, None),
        (crlf.as_bytes(), Some(&expected[3])),
        (s[4].as_bytes(), Some(&expected[4])),
        (s[5].as_bytes(), Some(&expected[5])),
    ];
    let mut input: Vec<u8> = Vec::new();
    for (bytes, _) in &cases {
        input.extend_from_slice(bytes);
        input.push(b'\n');
    }
    // The last line has no newline and still counts.
    input.pop();
    let want: Vec<Option<&str>> = cases.iter().map(|c| c.1).collect();

    // One segment per line, as given: the long line (60 sentences) stays one segment
    // over the subword limit. (Split into sentences, it would be 60 short ones.)
    let out = ok(run_with_input(
        rnmt()
            .args(model_arg(&tiny.dir))
            .args(["--beam", "3", "--batch-size", "2", "--no-split"]),
        &input,
    ));
    let got = lines(&out);
    assert_eq!(got.len(), want.len(), "output: {got:#?}");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        if let Some(w) = w {
            assert_eq!(g, w, "line {}", i + 1);
        }
    }
    assert!(!expected.iter().any(String::is_empty), "{expected:?}");
    // The long line is translated, truncated, with a warning naming it.
    assert!(
        !got[4].trim().is_empty(),
        "long line gave an empty translation"
    );
    let err = stderr(&out);
    assert!(
        err.contains("line 5") && err.contains("limit of 250"),
        "no truncation warning for line 5: {err}"
    );
    assert!(
        err.contains("line 7") && err.contains("invalid UTF-8"),
        "no UTF-8 warning for line 7: {err}"
    );
    // The garbage holds a real word: it is translated, not dropped.
    assert!(!got[6].trim().is_empty());
}

#[test]
fn translates_the_held_out_sentences() {
    // The other tests compare runs of the binary with each other; this one checks that
    // what it prints are English translations. The tiny model is far from perfect, so
    // it asserts what it has learnt: English words of the task in sentence form, and
    // at least half of the reference's words.
    let tiny = tiny_model();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(99);
    let pairs: Vec<(String, String)> = (0..20)
        .map(|_| translate_support::sentence_pair(&mut rng))
        .collect();
    assert_eq!(
        pairs[0].0, tiny.sentences[0],
        "the held-out generator changed"
    );
    let s: Vec<&str> = pairs.iter().map(|p| p.0.as_str()).collect();
    let out = ok(run(rnmt().args(model_arg(&tiny.dir)).args(&s)));
    let got = lines(&out);
    assert_eq!(got.len(), s.len());
    let english = translate_support::english_words();
    let words = |t: &str| -> Vec<String> {
        t.trim_end_matches('.')
            .split_whitespace()
            .map(str::to_lowercase)
            .collect()
    };
    let (mut hits, mut total) = (0, 0);
    for ((de, reference), en) in pairs.iter().zip(&got) {
        assert!(en.starts_with("The ") && en.ends_with('.'), "{de} → {en}");
        let mut reference = words(reference);
        total += reference.len();
        for w in words(en) {
            assert!(english.contains(&w.as_str()), "{de} → {en}: {w:?}");
            if let Some(k) = reference.iter().position(|r| *r == w) {
                reference.swap_remove(k);
                hits += 1;
            }
        }
    }
    eprintln!("{hits}/{total} reference words translated");
    // "The … the …" alone would give about a third; the model gets about 60%.
    assert!(hits * 2 >= total, "only {hits}/{total} reference words");
}

#[test]
fn reads_and_writes_files() {
    let tiny = tiny_model();
    let s: Vec<&str> = tiny.sentences[10..14].iter().map(String::as_str).collect();
    let expected = reference_translations(tiny, &s, "5");
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.de");
    let output = tmp.path().join("out.en");
    std::fs::write(&input, format!("{}\n\n{}\n{}\n{}", s[0], s[1], s[2], s[3])).unwrap();
    let out = ok(run(rnmt()
        .args(model_arg(&tiny.dir))
        .arg("-i")
        .arg(&input)
        .arg("-o")
        .arg(&output)));
    assert!(out.stdout.is_empty(), "stdout: {}", stdout(&out));
    let written = std::fs::read_to_string(&output).unwrap();
    let want = format!(
        "{}\n\n{}\n{}\n{}\n",
        expected[0], expected[1], expected[2], expected[3]
    );
    assert_eq!(written, want);

    let missing = tmp.path().join("nope.de");
    let out = run(rnmt().args(model_arg(&tiny.dir)).arg("-i").arg(&missing));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("nope.de"), "{}", stderr(&out));
}

/// `-i F -o F` reads F whole before replacing it (the output goes to a temporary file
/// renamed at the end); a failed run leaves an existing output untouched.
#[test]
fn output_replaces_the_file_only_when_done() {
    let tiny = tiny_model();
    let s: Vec<&str> = tiny.sentences[20..23].iter().map(String::as_str).collect();
    let expected = reference_translations(tiny, &s, "5");
    let tmp = tempfile::tempdir().unwrap();
    let same = tmp.path().join("same.txt");
    std::fs::write(&same, s.join("\n") + "\n").unwrap();
    ok(run(rnmt()
        .args(model_arg(&tiny.dir))
        .arg("-i")
        .arg(&same)
        .arg("-o")
        .arg(&same)));
    assert_eq!(
        std::fs::read_to_string(&same).unwrap(),
        expected.join("\n") + "\n"
    );

    let before = std::fs::read(&same).unwrap();
    let out = run(rnmt()
        .args(model_arg(&tiny.dir))
        .args(["--beam", "2", "--nbest", "3"])
        .arg("-i")
        .arg(&same)
        .arg("-o")
        .arg(&same));
    assert!(
        !out.status.success(),
        "n-best larger than the beam must fail"
    );
    assert_eq!(
        std::fs::read(&same).unwrap(),
        before,
        "a failed run changed the output"
    );
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "temporary files left behind: {leftovers:?}"
    );
}

#[test]
fn json_lines_hold_translation_score_nbest_and_alignment() {
    let tiny = tiny_model();
    let s: Vec<&str> = tiny.sentences[20..24].iter().map(String::as_str).collect();
    let expected = reference_translations(tiny, &s, "4");
    let input = format!("{}\n{}\n\n{}\n{}\n", s[0], s[1], s[2], s[3]);
    let out = ok(run_with_input(
        rnmt().args(model_arg(&tiny.dir)).args([
            "-f",
            "json",
            "--beam",
            "4",
            "--nbest",
            "3",
            "--alignments",
        ]),
        input.as_bytes(),
    ));
    let got = lines(&out);
    assert_eq!(got.len(), 5);
    let sources = [Some(s[0]), Some(s[1]), None, Some(s[2]), Some(s[3])];
    let mut next = expected.iter();
    for (line, source) in got.iter().zip(sources) {
        let v: serde_json::Value = serde_json::from_str(line).expect("valid JSON");
        let translation = v["translation"].as_str().expect("translation");
        let score = v["score"].as_f64().expect("score");
        let nbest = v["nbest"].as_array().expect("nbest");
        let Some(source) = source else {
            assert_eq!(translation, "");
            assert!(nbest.is_empty());
            continue;
        };
        assert_eq!(translation, next.next().unwrap());
        assert!(score < 0.0, "{line}");
        assert!((1..=3).contains(&nbest.len()), "{line}");
        assert_eq!(nbest[0]["translation"], v["translation"]);
        assert_eq!(nbest[0]["score"], v["score"]);
        let scores: Vec<f64> = nbest.iter().map(|e| e["score"].as_f64().unwrap()).collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{line}");
        let alignment = v["alignment"].as_str().expect("alignment");
        check_pharaoh(alignment, source, translation);
    }
}

#[test]
fn nbest_lists_are_tagged_sorted_and_led_by_the_best() {
    let tiny = tiny_model();
    let s: Vec<&str> = tiny.sentences[30..33].iter().map(String::as_str).collect();
    let expected = reference_translations(tiny, &s, "4");
    let input = format!("{}\n\n{}\n{}\n", s[0], s[1], s[2]);
    let out = ok(run_with_input(
        rnmt()
            .args(model_arg(&tiny.dir))
            .args(["--beam", "4", "--nbest", "4"]),
        input.as_bytes(),
    ));
    // `index ||| translation ||| score`, Moses style.
    let mut by_index: Vec<Vec<(String, f64)>> = vec![Vec::new(); 4];
    let mut last = 0;
    for line in lines(&out) {
        let fields: Vec<&str> = line.split(" ||| ").collect();
        assert_eq!(fields.len(), 3, "{line:?}");
        let index: usize = fields[0].parse().unwrap();
        assert!(index >= last, "n-best lines out of order: {line}");
        last = index;
        by_index[index].push((fields[1].to_string(), fields[2].parse().unwrap()));
    }
    assert_eq!(by_index[1], vec![(String::new(), 0.0)], "the empty line");
    let mut total = 0;
    for (list, want) in [&by_index[0], &by_index[2], &by_index[3]]
        .into_iter()
        .zip(&expected)
    {
        assert!((1..=4).contains(&list.len()), "{list:?}");
        assert_eq!(&list[0].0, want);
        assert!(list.windows(2).all(|w| w[0].1 >= w[1].1), "{list:?}");
        total += list.len();
    }
    assert!(total > 3, "beam 4 found a single hypothesis per sentence");
}

#[test]
fn alignments_are_pharaoh_pairs_in_range() {
    let tiny = tiny_model();
    let s: Vec<&str> = tiny.sentences[40..45].iter().map(String::as_str).collect();
    let expected = reference_translations(tiny, &s, "5");
    let out = ok(run(rnmt()
        .args(model_arg(&tiny.dir))
        .arg("--alignments")
        .args(&s)));
    let got = lines(&out);
    assert_eq!(got.len(), s.len());
    for ((line, source), want) in got.iter().zip(&s).zip(&expected) {
        let (translation, alignment) = line.split_once(" ||| ").expect("`text ||| alignment`");
        assert_eq!(translation, want);
        check_pharaoh(alignment, source, translation);
    }
    // Subword positions: inside the source's subwords and the longest output.
    let src_len = tiny.source().encode(s[0]).unwrap().len();
    let max_tgt = (1.5 * (src_len + 1) as f32) as usize + 5;
    let out = ok(run(rnmt().args(model_arg(&tiny.dir)).args([
        "--alignments",
        "--align-unit",
        "subword",
        s[0],
    ])));
    let line = lines(&out).remove(0);
    let (_, alignment) = line.split_once(" ||| ").unwrap();
    let mut aligned = 0;
    for p in alignment.split_whitespace() {
        let (i, j) = p.split_once('-').unwrap();
        let (i, j): (usize, usize) = (i.parse().unwrap(), j.parse().unwrap());
        assert!(i < src_len && j < max_tgt, "{p} in {line}");
        aligned += 1;
    }
    assert!(aligned > 0, "{line}");
}

/// Asserts `alignment` is Pharaoh `i-j` pairs with word positions inside the source and
/// the translation, and that it aligns at least one word.
fn check_pharaoh(alignment: &str, source: &str, translation: &str) {
    let (src_words, tgt_words) = (
        source.split_whitespace().count(),
        translation.split_whitespace().count(),
    );
    let pairs: Vec<(usize, usize)> = alignment
        .split_whitespace()
        .map(|p| {
            let (i, j) = p.split_once('-').unwrap_or_else(|| panic!("pair {p:?}"));
            (i.parse().unwrap(), j.parse().unwrap())
        })
        .collect();
    assert!(
        !pairs.is_empty(),
        "no alignment for {source} → {translation}"
    );
    for &(i, j) in &pairs {
        assert!(
            i < src_words && j < tgt_words,
            "{i}-{j} out of range for {source} → {translation}"
        );
    }
}

#[test]
fn attention_plot_is_an_svg_or_png_with_the_tokens() {
    let tiny = tiny_model();
    let tmp = tempfile::tempdir().unwrap();
    let plot = tmp.path().join("att.svg");
    let sentence = "Der Hund jagt die Katze.";
    let out = ok(run(rnmt()
        .args(model_arg(&tiny.dir))
        .arg("--attention-plot")
        .arg(&plot)
        .arg(sentence)));
    let translation = lines(&out).remove(0);
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    let texts = check_xml(&svg);
    // Every source and target word shows, in subword pieces, as labels.
    let labels = texts.concat();
    for word in sentence
        .split_whitespace()
        .chain(translation.split_whitespace())
    {
        let mut rest = labels.as_str();
        for c in word.chars() {
            let at = rest
                .find(c)
                .unwrap_or_else(|| panic!("{word:?} is not among the labels {texts:?}"));
            rest = &rest[at + c.len_utf8()..];
        }
    }
    assert!(texts.iter().any(|t| t.contains("Hund")), "{texts:?}");
    assert!(
        texts.iter().any(|t| t == "&lt;/s&gt;" || t == "</s>"),
        "{texts:?}"
    );
    // One heatmap cell per (target, source) pair.
    assert!(svg.matches("<rect").count() > 5 * 6, "too few cells");

    // The same plot as PNG (its pixels are checked in src/plot.rs).
    let png = tmp.path().join("att.png");
    ok(run(rnmt()
        .args(model_arg(&tiny.dir))
        .arg("--attention-plot")
        .arg(&png)
        .arg(sentence)));
    let bytes = std::fs::read(&png).expect("PNG plot written");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG file");

    let out = run(rnmt()
        .args(model_arg(&tiny.dir))
        .arg("--attention-plot")
        .arg(tmp.path().join("att.bmp"))
        .arg(sentence));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("att.bmp"), "{}", stderr(&out));
}

/// Checks that every tag of `xml` is closed in order and returns the text between tags.
fn check_xml(xml: &str) -> Vec<String> {
    let mut open: Vec<String> = Vec::new();
    let mut texts = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find('<') {
        let text = rest[..start].trim();
        if !text.is_empty() {
            texts.push(text.to_string());
        }
        let end = rest[start..].find('>').expect("unterminated tag") + start;
        let tag = &rest[start + 1..end];
        rest = &rest[end + 1..];
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '/')
            .collect();
        if let Some(closing) = tag.strip_prefix('/') {
            assert_eq!(
                open.pop().as_deref(),
                Some(closing.trim()),
                "mismatched </{name}>"
            );
        } else if !tag.ends_with('/') {
            open.push(name);
        }
    }
    assert!(open.is_empty(), "unclosed tags {open:?}");
    assert!(rest.trim().is_empty(), "text after the root: {rest:?}");
    texts
}

#[test]
fn ensembles_run() {
    let tiny = tiny_model();
    let s: Vec<&str> = tiny.sentences[50..54].iter().map(String::as_str).collect();
    let out = ok(run(rnmt()
        .args(model_arg(&tiny.dir))
        .args(model_arg(&tiny.other))
        .args(["-f", "json"])
        .args(&s)));
    let got = lines(&out);
    assert_eq!(got.len(), s.len());
    for line in &got {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            v["translation"].as_str().unwrap().starts_with("The"),
            "{line}"
        );
    }
    // The ensemble scores by both members: its scores differ from the first alone.
    let alone = ok(run(rnmt()
        .args(model_arg(&tiny.dir))
        .args(["-f", "json"])
        .args(&s)));
    assert_ne!(stdout(&alone), stdout(&out));
}

/// A copy of the tiny model folder in `into`.
fn copy_model(tiny: &TinyModel, into: &Path) -> PathBuf {
    std::fs::create_dir_all(into).unwrap();
    for entry in std::fs::read_dir(&tiny.dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), into.join(entry.file_name())).unwrap();
    }
    into.to_path_buf()
}

#[test]
fn default_model_and_model_errors() {
    let tiny = tiny_model();
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let sentence = tiny.sentences[0].as_str();

    // The crate ships no default model yet; once it does, "none installed" cannot happen.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tatoeba-de-en");
    if shipped.join("config.json").is_file() {
        eprintln!(
            "skipping the no-default-model check: {} exists",
            shipped.display()
        );
    } else {
        let out = run(rnmt().env("RNMT_MODELS", &models).arg(sentence));
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains("no default model") && err.contains("--model"),
            "{err}"
        );
        assert!(out.stdout.is_empty());
    }

    // $RNMT_MODELS/tatoeba-de-en is the default model.
    copy_model(tiny, &models.join("tatoeba-de-en"));
    let with_default = ok(run(rnmt().env("RNMT_MODELS", &models).arg(sentence)));
    let explicit = ok(run(rnmt().args(model_arg(&tiny.dir)).arg(sentence)));
    assert_eq!(stdout(&with_default), stdout(&explicit));

    for file in [
        "model.safetensors",
        "config.json",
        "tokenizer-src.json",
        "tokenizer-tgt.json",
    ] {
        let dir = copy_model(tiny, &tmp.path().join(format!("without-{file}")));
        std::fs::remove_file(dir.join(file)).unwrap();
        let out = run(rnmt().args(model_arg(&dir)).arg(sentence));
        assert!(!out.status.success(), "runs without {file}");
        let err = stderr(&out);
        assert!(err.contains(file) && err.contains("missing"), "{err}");
        assert!(out.stdout.is_empty());
    }

    let out = run(rnmt().args(["--model", "/nonexistent/rnmt-model", sentence]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("/nonexistent/rnmt-model"));
}

/// A loopback stand-in for the Hugging Face Hub serving model folders at
/// `/{org}/{name}/resolve/{revision}/{file}` the way hf-hub 0.4's sync client needs: it
/// first asks for `Range: bytes=0-0` and reads `etag`, `x-repo-commit` and
/// `Content-Range: bytes 0-0/SIZE`, then fetches `Range: bytes=N-`.
struct HubServer {
    url: String,
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Request lines (`GET /… HTTP/1.1`), in order.
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The commit every served revision resolves to.
const HUB_COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

impl HubServer {
    /// Serves `repos` (`org/name` → model folder).
    fn start(repos: Vec<(String, PathBuf)>) -> Self {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop2, requests2) = (stop.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    Self::answer(stream, &repos, &requests2);
                }
            }
        });
        Self {
            url: format!("http://{addr}"),
            addr,
            stop,
            requests,
            thread: Some(thread),
        }
    }

    fn answer(
        mut stream: std::net::TcpStream,
        repos: &[(String, PathBuf)],
        requests: &std::sync::Mutex<Vec<String>>,
    ) {
        use std::io::BufRead;
        let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
        let mut request = String::new();
        if reader.read_line(&mut request).is_err() {
            return;
        }
        let mut range = None;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) <= 2 {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("range") {
                    range = Some(value.trim().to_string());
                }
            }
        }
        requests.lock().unwrap().push(request.trim().to_string());
        let path = request.split_whitespace().nth(1).unwrap_or("/");
        let file = path
            .trim_start_matches('/')
            .splitn(5, '/')
            .collect::<Vec<_>>();
        let found = match file[..] {
            [org, name, "resolve", rev, file] if rev == "main" || rev == HUB_COMMIT => repos
                .iter()
                .find(|(repo, _)| *repo == format!("{org}/{name}"))
                .map(|(_, dir)| dir.join(file))
                .filter(|f| !file.contains('/') && f.is_file()),
            _ => None,
        };
        let Some(file) = found else {
            let body = "Repository not found";
            let _ = write!(
                stream,
                "HTTP/1.1 404 Not Found\r\nX-Error-Code: RepositoryNotFound\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            return;
        };
        let bytes = std::fs::read(&file).unwrap();
        let etag = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            format!("{:016x}", h.finish())
        };
        let size = bytes.len();
        let (status, start, end) = match range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split_once('-'))
        {
            Some((s, e)) => {
                let start: usize = s.parse().unwrap();
                let end = e.parse().unwrap_or(size - 1).min(size - 1);
                ("206 Partial Content", start, end)
            }
            None => ("200 OK", 0, size - 1),
        };
        let body = &bytes[start..=end];
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{end}/{size}\r\nETag: \"{etag}\"\r\nX-Repo-Commit: {HUB_COMMIT}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(body);
    }

    /// Stops serving: afterwards nothing listens on the port.
    fn stop(mut self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = std::net::TcpStream::connect(self.addr);
        self.thread.take().unwrap().join().unwrap();
        let requests = self.requests.lock().unwrap().clone();
        requests
    }
}

#[test]
fn hub_models_download_on_loopback_then_work_offline() {
    let tiny = tiny_model();
    let s: Vec<&str> = tiny.sentences[60..63].iter().map(String::as_str).collect();
    let local = stdout(&ok(run(rnmt().args(model_arg(&tiny.dir)).args(&s))));
    let hf_home = tempfile::tempdir().unwrap();
    let server = HubServer::start(vec![("rnmt-test/tiny".into(), tiny.dir.clone())]);
    let hub = |endpoint: &str| {
        let mut cmd = rnmt();
        cmd.env("HF_HOME", hf_home.path())
            .env("HF_ENDPOINT", endpoint)
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("HF_TOKEN")
            .env("NO_PROXY", "127.0.0.1")
            .env("no_proxy", "127.0.0.1");
        cmd
    };

    let out = ok(run(hub(&server.url)
        .args(["--model", "hf:rnmt-test/tiny"])
        .args(&s)));
    assert_eq!(stdout(&out), local);
    let snapshot = hf_home
        .path()
        .join("hub/models--rnmt-test--tiny/snapshots")
        .join(HUB_COMMIT);
    for file in rnmt::hub::MODEL_FILES {
        assert_eq!(
            std::fs::read(snapshot.join(file)).unwrap(),
            std::fs::read(tiny.dir.join(file)).unwrap(),
            "cached {file}"
        );
    }
    let refs = hf_home.path().join("hub/models--rnmt-test--tiny/refs/main");
    assert_eq!(std::fs::read_to_string(refs).unwrap().trim(), HUB_COMMIT);

    let out = run(hub(&server.url).args(["--model", "hf:rnmt-test/missing", s[0]]));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("hf:rnmt-test/missing") && err.contains("404"),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    let requests = server.stop();
    for file in rnmt::hub::MODEL_FILES {
        let url = format!("GET /rnmt-test/tiny/resolve/main/{file} HTTP/1.1");
        // The metadata request, then the download.
        assert_eq!(
            requests.iter().filter(|r| **r == url).count(),
            2,
            "{requests:#?}"
        );
    }

    // Nothing listens any more: the cache alone serves the model.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let out = ok(run(hub(&dead_url)
        .args(["--model", "hf:rnmt-test/tiny"])
        .args(&s)));
    assert_eq!(stdout(&out), local);
    let out = ok(run(hub(&dead_url)
        .env("HF_HUB_OFFLINE", "1")
        .args(["--model", "hf:rnmt-test/tiny"])
        .args(&s)));
    assert_eq!(stdout(&out), local);
    // A model that was never downloaded cannot come from the cache.
    let out = run(hub(&dead_url).env("HF_HUB_OFFLINE", "1").args([
        "--model",
        "hf:rnmt-test/other",
        s[0],
    ]));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("hf:rnmt-test/other") && err.contains("not in the cache"),
        "{err}"
    );
}

#[test]
fn hub_downloads_the_shortlist_when_it_is_asked_for() {
    let tiny = tiny_model();
    let tmp = tempfile::tempdir().unwrap();
    let model = copy_model(tiny, &tmp.path().join("model"));
    tiny.shortlist(100)
        .save(&model.join("shortlist.safetensors"))
        .unwrap();
    let s: Vec<&str> = tiny.sentences[40..44].iter().map(String::as_str).collect();
    let local = stdout(&ok(run(rnmt()
        .args(model_arg(&model))
        .arg("--shortlist")
        .args(&s))));

    let hf_home = tempfile::tempdir().unwrap();
    let server = HubServer::start(vec![("rnmt-test/listed".into(), model.clone())]);
    let hub = || {
        let mut cmd = rnmt();
        cmd.env("HF_HOME", hf_home.path())
            .env("HF_ENDPOINT", &server.url)
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("HF_TOKEN")
            .env("NO_PROXY", "127.0.0.1")
            .env("no_proxy", "127.0.0.1");
        cmd
    };
    ok(run(hub().args(["--model", "hf:rnmt-test/listed"]).args(&s)));
    let out = ok(run(hub()
        .args(["--model", "hf:rnmt-test/listed", "--shortlist"])
        .args(&s)));
    assert_eq!(stdout(&out), local);
    let requests = server.stop();
    let url = "GET /rnmt-test/listed/resolve/main/shortlist.safetensors HTTP/1.1";
    // Only the run with --shortlist asked for it: metadata, then the download.
    assert_eq!(
        requests.iter().filter(|r| *r == url).count(),
        2,
        "{requests:#?}"
    );
}

#[test]
fn shortlist_is_learned_then_used_and_its_absence_is_explained() {
    let tiny = tiny_model();
    let tmp = tempfile::tempdir().unwrap();
    let model = copy_model(tiny, &tmp.path().join("model"));
    let s: Vec<&str> = tiny.sentences[20..32].iter().map(String::as_str).collect();

    let out = run(rnmt().args(model_arg(&model)).arg("--shortlist").args(&s));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("shortlist.safetensors does not exist") && err.contains("rnmt shortlist"),
        "{err}"
    );

    let pairs = translate_support::training_pairs();
    let train = tmp.path().join("train");
    for (lang, side) in [("de", 0), ("en", 1)] {
        let text: String = pairs
            .iter()
            .map(|p| format!("{}\n", if side == 0 { &p.0 } else { &p.1 }))
            .collect();
        std::fs::write(train.with_extension(lang), text).unwrap();
    }
    let learned = Command::new(env!("CARGO_BIN_EXE_rnmt"))
        .args(["shortlist", "--model"])
        .arg(&model)
        .arg("--train")
        .arg(&train)
        .args(["--src-lang", "de", "--tgt-lang", "en"])
        .output()
        .unwrap();
    let learned = ok(learned);
    assert!(stderr(&learned).contains("learned from 2000 sentence pairs"));
    assert!(model.join("shortlist.safetensors").is_file());

    // Every subword the tiny task's training targets use is among its 1000 most frequent,
    // so the shortlist leaves out only subwords never seen there. Their probability mass
    // is small but not zero, and renormalising without it shifts each hypothesis' score by
    // a constant of its own, which may flip a near-tie (the exact property, that shortlist
    // search is full search with the other subwords masked, is tested in search_beam.rs).
    let full = reference_translations(tiny, &s, "5");
    let out = ok(run(rnmt()
        .args(model_arg(&model))
        .args(["--shortlist", "--shortlist-size", "1000,100"])
        .args(&s)));
    let got = lines(&out);
    assert_eq!(got.len(), full.len());
    let same = got.iter().zip(&full).filter(|(a, b)| a == b).count();
    assert!(same >= full.len() - 2, "{got:#?}\n{full:#?}");
    // A tight shortlist still gives one line per input.
    let out = ok(run(rnmt()
        .args(model_arg(&model))
        .args(["--shortlist", "--shortlist-size", "2,1"])
        .args(&s)));
    assert_eq!(lines(&out).len(), s.len());

    let out = run(rnmt()
        .args(model_arg(&model))
        .args(["--shortlist", "--shortlist-size", "many"])
        .args(&s));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("FREQUENT,PER_WORD"),
        "{}",
        stderr(&out)
    );
}
