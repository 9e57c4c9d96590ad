//! AdamW with decoupled weight decay, the warm-up + cosine learning-rate schedule and global
//! gradient-norm clipping, on flat f32 vectors.

/// AdamW state (PyTorch's `torch.optim.AdamW` arithmetic).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AdamW {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// Updates done so far.
    pub t: u64,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl AdamW {
    pub fn new(len: usize, beta1: f32, beta2: f32, eps: f32, weight_decay: f32) -> Self {
        Self { m: vec![0.0; len], v: vec![0.0; len], t: 0, beta1, beta2, eps, weight_decay }
    }

    /// One update of `p` with gradient `g` at learning rate `lr`.
    #[cfg(test)]
    pub fn step(&mut self, p: &mut [f32], g: &[f32], lr: f32) {
        self.step_except(p, g, lr, &[]);
    }

    /// One update of `p` with gradient `g` at learning rate `lr`, leaving the entries in the
    /// sorted, disjoint ranges `frozen` untouched (no decay, no moment update).
    pub fn step_except(&mut self, p: &mut [f32], g: &[f32], lr: f32, frozen: &[std::ops::Range<usize>]) {
        assert_eq!(p.len(), g.len());
        assert_eq!(p.len(), self.m.len());
        self.t += 1;
        let mut start = 0;
        for r in frozen.iter().chain(std::iter::once(&(p.len()..p.len()))) {
            if r.start > start {
                self.update(start..r.start, p, g, lr);
            }
            start = start.max(r.end);
        }
    }

    fn update(&mut self, range: std::ops::Range<usize>, p: &mut [f32], g: &[f32], lr: f32) {
        let bc1 = 1.0 - (self.beta1 as f64).powi(self.t as i32);
        let bc2 = 1.0 - (self.beta2 as f64).powi(self.t as i32);
        let step = (lr as f64 / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let decay = 1.0 - lr * self.weight_decay;
        let (b1, b2, eps) = (self.beta1, self.beta2, self.eps);
        let (p, g) = (&mut p[range.clone()], &g[range.clone()]);
        let (m, v) = (&mut self.m[range.clone()], &mut self.v[range]);
        for (((pi, &gi), mi), vi) in p.iter_mut().zip(g).zip(m).zip(v) {
            *pi *= decay;
            *mi = b1 * *mi + (1.0 - b1) * gi;
            *vi = b2 * *vi + (1.0 - b2) * gi * gi;
            *pi -= step * *mi / (vi.sqrt() / bc2_sqrt + eps);
        }
    }
}

/// Learning rate of optimizer step `step` (0-based) of `total`: linear warm-up to `peak` over
/// `warmup` steps, then a cosine from `peak` down to `peak · min_ratio` at the last step.
pub(crate) fn lr_at(step: usize, total: usize, warmup: usize, peak: f32, min_ratio: f32) -> f32 {
    if step < warmup {
        return peak * (step + 1) as f32 / warmup as f32;
    }
    let span = total.saturating_sub(warmup).saturating_sub(1).max(1);
    let progress = ((step - warmup) as f32 / span as f32).min(1.0);
    let cos = 0.5 * (1.0 + (std::f32::consts::PI * progress).cos());
    peak * (min_ratio + (1.0 - min_ratio) * cos)
}

/// Scales `g` down to global L2 norm `max` if it is above it (`max <= 0`: no clipping);
/// returns the norm before clipping.
pub(crate) fn clip_grad_norm(g: &mut [f32], max: f32) -> f32 {
    let norm = g.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt() as f32;
    if max > 0.0 && norm > max {
        let s = max / (norm + 1e-6);
        g.iter_mut().for_each(|x| *x *= s);
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adamw_matches_hand_computed_first_steps() {
        let mut o = AdamW::new(1, 0.9, 0.999, 1e-8, 0.1);
        let mut p = [1.0f32];
        o.step(&mut p, &[0.5], 0.01);
        // decay: 1 - 0.001 = 0.999; first Adam step moves by lr·sign(g).
        assert!((p[0] - (0.999 - 0.01)).abs() < 1e-6, "{}", p[0]);
        let before = p[0];
        o.step(&mut p, &[0.5], 0.01);
        assert!((p[0] - (before * 0.999 - 0.01)).abs() < 1e-5, "{}", p[0]);
    }

    #[test]
    fn frozen_ranges_take_no_update_and_the_rest_the_same_one() {
        let g = [0.3f32, -0.2, 0.5, 0.1, -0.4];
        let (mut all, mut some) = (AdamW::new(5, 0.9, 0.999, 1e-8, 0.1), AdamW::new(5, 0.9, 0.999, 1e-8, 0.1));
        let (mut p, mut q) = ([1.0f32; 5], [1.0f32; 5]);
        for _ in 0..3 {
            all.step(&mut p, &g, 0.01);
            some.step_except(&mut q, &g, 0.01, &[0..1, 2..4]);
        }
        assert_eq!([q[0], q[2], q[3]], [1.0; 3]);
        assert_eq!([q[1], q[4]], [p[1], p[4]]);
        assert_eq!(some.m[0], 0.0);
    }

    #[test]
    fn adamw_minimises_a_quadratic() {
        let mut o = AdamW::new(3, 0.9, 0.999, 1e-8, 0.0);
        let mut p = [3.0f32, -2.0, 0.5];
        for _ in 0..2000 {
            let g: Vec<f32> = p.iter().map(|x| 2.0 * (x - 1.0)).collect();
            o.step(&mut p, &g, 0.01);
        }
        assert!(p.iter().all(|x| (x - 1.0).abs() < 1e-2), "{p:?}");
    }

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let lr = |s| lr_at(s, 10, 2, 1.0, 0.1);
        assert_eq!(lr(0), 0.5);
        assert_eq!(lr(1), 1.0);
        assert_eq!(lr(2), 1.0);
        assert!((lr(9) - 0.1).abs() < 1e-6);
        assert!((2..9).all(|s| lr(s + 1) < lr(s)));
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let mut g = [3.0f32, 4.0];
        assert_eq!(clip_grad_norm(&mut g, 1.0), 5.0);
        assert!((g[0] - 0.6).abs() < 1e-5 && (g[1] - 0.8).abs() < 1e-5);
        let mut h = [0.3f32, 0.4];
        clip_grad_norm(&mut h, 1.0);
        assert_eq!(h, [0.3, 0.4]);
    }
}
