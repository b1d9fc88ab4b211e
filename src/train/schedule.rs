//! Learning-rate schedules: the constant, inverse-square-root (Transformer), GNMT
//! (staircase halving) and RNMT+ (exponential decay) schedules, and decay on plateau.
//! Every schedule starts with a linear warmup.

use serde::{Deserialize, Serialize};

pub use crate::train::config::ScheduleKind;
use crate::train::config::TrainConfig;

/// What the plateau schedule remembers between validations (saved in checkpoints).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PlateauState {
    /// Product of the decays applied so far.
    pub scale: f64,
    pub best: Option<f64>,
    pub bad_validations: u64,
}

#[derive(Clone, Debug)]
pub struct Schedule {
    /// The schedule's keys (`schedule`, `lr`, `warmup_steps`, `decay_*`,
    /// `plateau_patience`, `min_lr`) are top-level keys of the training config.
    pub p: TrainConfig,
    pub plateau: PlateauState,
}

impl Schedule {
    pub fn new(cfg: &TrainConfig) -> Self {
        Self {
            p: cfg.clone(),
            plateau: PlateauState {
                scale: 1.0,
                best: None,
                bad_validations: 0,
            },
        }
    }

    /// The learning rate for update number `step` (1-based), for a schedule that does
    /// not follow the time budget.
    pub fn lr(&self, step: u64) -> f64 {
        self.lr_at(step, 0.0)
    }

    /// The learning rate for update number `step` (1-based) taken when `budget_fraction`
    /// of `max_minutes` has passed (it matters only with `decay_end_fraction`).
    pub fn lr_at(&self, step: u64, budget_fraction: f64) -> f64 {
        let p = &self.p;
        let step = step.max(1);
        let warm = if p.warmup_steps > 0 && step < p.warmup_steps {
            step as f64 / p.warmup_steps as f64
        } else {
            1.0
        };
        let decay = match p.schedule {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::InverseSqrt => {
                (p.warmup_steps.max(1) as f64 / step.max(p.warmup_steps) as f64).sqrt()
            }
            ScheduleKind::Gnmt => {
                if step < p.decay_start {
                    1.0
                } else {
                    let times =
                        ((step - p.decay_start) / p.decay_interval.max(1) + 1).min(p.decay_times);
                    p.decay_factor.powi(times as i32)
                }
            }
            ScheduleKind::RnmtPlus if p.decay_end_fraction > 0.0 => {
                let (a, b) = (p.decay_start_fraction, p.decay_end_fraction);
                if budget_fraction < a {
                    1.0
                } else {
                    p.decay_factor.powf((budget_fraction - a) / (b - a))
                }
            }
            ScheduleKind::RnmtPlus => {
                if step < p.decay_start {
                    1.0
                } else {
                    let span = p.decay_end.saturating_sub(p.decay_start).max(1) as f64;
                    p.decay_factor.powf((step - p.decay_start) as f64 / span)
                }
            }
            ScheduleKind::Plateau => self.plateau.scale,
        };
        let lr = p.lr * warm * decay;
        // The floor applies to the decay, not to the warmup ramp.
        if warm < 1.0 {
            lr
        } else {
            lr.max(p.min_lr.min(p.lr))
        }
    }

    /// Tells the plateau schedule about a validation score (higher is better).
    /// Returns true when the learning rate was decayed.
    pub fn observe(&mut self, score: f64) -> bool {
        if self.p.schedule != ScheduleKind::Plateau {
            return false;
        }
        let st = &mut self.plateau;
        if st.best.is_none_or(|b| score > b) {
            st.best = Some(score);
            st.bad_validations = 0;
            return false;
        }
        st.bad_validations += 1;
        if st.bad_validations >= self.p.plateau_patience.max(1) {
            st.bad_validations = 0;
            st.scale *= self.p.decay_factor;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kind: ScheduleKind) -> TrainConfig {
        TrainConfig {
            schedule: kind,
            lr: 1e-3,
            warmup_steps: 100,
            decay_start: 1000,
            decay_end: 2000,
            decay_interval: 500,
            decay_times: 3,
            decay_factor: 0.5,
            plateau_patience: 2,
            min_lr: 1e-5,
            ..TrainConfig::default()
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn warmup_then_schedule() {
        let s = Schedule::new(&params(ScheduleKind::Constant));
        assert!(close(s.lr(1), 1e-5));
        assert!(close(s.lr(50), 5e-4));
        assert!(close(s.lr(100), 1e-3));
        assert!(close(s.lr(100_000), 1e-3));

        let s = Schedule::new(&params(ScheduleKind::InverseSqrt));
        assert!(close(s.lr(100), 1e-3));
        assert!(close(s.lr(400), 5e-4));

        let s = Schedule::new(&params(ScheduleKind::Gnmt));
        assert!(close(s.lr(999), 1e-3));
        assert!(close(s.lr(1000), 5e-4));
        assert!(close(s.lr(1499), 5e-4));
        assert!(close(s.lr(1500), 2.5e-4));
        assert!(close(s.lr(2000), 1.25e-4));
        assert!(close(s.lr(90_000), 1.25e-4), "at most decay_times halvings");

        let s = Schedule::new(&params(ScheduleKind::RnmtPlus));
        assert!(close(s.lr(1000), 1e-3));
        assert!(close(s.lr(2000), 5e-4));
        assert!(close(s.lr(3000), 2.5e-4));
        assert!(close(s.lr(1500), 1e-3 * 0.5f64.sqrt()));
        assert!(close(s.lr(100_000), 1e-5), "floored at min_lr");
    }

    #[test]
    fn rnmt_plus_over_the_time_budget() {
        let s = Schedule::new(&TrainConfig {
            max_minutes: 60.0,
            decay_start_fraction: 0.5,
            decay_end_fraction: 0.75,
            ..params(ScheduleKind::RnmtPlus)
        });
        // The step no longer matters after warm-up; the fraction of the budget does.
        assert!(close(s.lr_at(50, 0.1), 5e-4), "warm-up still by steps");
        assert!(close(s.lr_at(5_000, 0.4), 1e-3));
        assert!(close(s.lr_at(100_000, 0.5), 1e-3));
        assert!(close(s.lr_at(200, 0.75), 5e-4));
        assert!(close(s.lr_at(200, 1.0), 2.5e-4));
        assert!(close(s.lr_at(200, 0.625), 1e-3 * 0.5f64.sqrt()));
        // Without the fractions the same config decays by steps.
        let by_steps = Schedule::new(&params(ScheduleKind::RnmtPlus));
        assert!(close(by_steps.lr_at(2000, 0.0), by_steps.lr_at(2000, 0.9)));
    }

    #[test]
    fn plateau_decays_after_patience() {
        let mut s = Schedule::new(&params(ScheduleKind::Plateau));
        assert!(!s.observe(10.0));
        assert!(!s.observe(12.0));
        assert!(!s.observe(11.0));
        assert!(close(s.lr(500), 1e-3));
        assert!(s.observe(11.5), "second validation without improvement");
        assert!(close(s.lr(500), 5e-4));
        assert!(!s.observe(13.0));
        assert_eq!(s.plateau.bad_validations, 0);
    }
}
