//! Subword models: learning, loading and applying Hugging Face `tokenizer.json` files.

/// Special tokens and their fixed ids, the same in every vocabulary rnmt writes.
pub const PAD: &str = "<pad>";
pub const UNK: &str = "<unk>";
pub const BOS: &str = "<s>";
pub const EOS: &str = "</s>";
pub const PAD_ID: u32 = 0;
pub const UNK_ID: u32 = 1;
pub const BOS_ID: u32 = 2;
pub const EOS_ID: u32 = 3;
pub const SPECIAL_TOKENS: [&str; 4] = [PAD, UNK, BOS, EOS];
