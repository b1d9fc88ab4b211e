//! The stacked-LSTM encoder–decoder with attention.

pub mod lstm;
