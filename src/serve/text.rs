//! A request text as the sentences the batcher translates, and back.

use anyhow::Result;

use crate::translate::{Translation, Translator};

/// `format` of `/translate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Html,
}

/// A text cut into sentences, with what it takes to put their translations back.
pub struct Segmented {
    sentences: Vec<String>,
}

impl Segmented {
    /// Until sentence splitting lands, a text is one sentence.
    pub fn new(_translator: &Translator, text: &str, _format: Format) -> Result<Self> {
        Ok(Self {
            sentences: vec![text.to_string()],
        })
    }

    pub fn sentences(&self) -> &[String] {
        &self.sentences
    }

    /// The text with each sentence replaced by its `k`-th best translation (its best one
    /// where it has fewer).
    pub fn assemble(&self, translations: &[Translation], k: usize) -> String {
        translations
            .iter()
            .map(|t| nth_best(t, k))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn nth_best(t: &Translation, k: usize) -> &str {
    match t.nbest.get(k) {
        Some(e) if k > 0 => &e.translation,
        _ => &t.translation,
    }
}
