//! The command line itself: help, version, and errors for unfinished commands.

mod common;

use common::*;

#[test]
fn help_shows_an_example_for_each_subcommand() {
    for sub in [
        "prepare",
        "train",
        "translate",
        "bleu",
        "corpus fetch",
        "lm score",
        "lm next",
        "lm generate",
    ] {
        let out = run(rnmt().args(sub.split(' ')).arg("--help"));
        assert!(out.status.success(), "{sub}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains("Example:") && text.contains(&format!("rnmt {sub}")),
            "{sub} --help:\n{text}"
        );
    }
}

#[test]
fn version_is_the_crate_version() {
    let out = run(rnmt().arg("--version"));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("rnmt {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bad_arguments_exit_non_zero() {
    let out = run(rnmt().args(["prepare", "--train", "x"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--src-lang"));
}
