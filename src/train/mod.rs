//! Training: loss, optimizer and schedules, checkpoints, validation.
