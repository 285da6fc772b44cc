//! Scalar formulas written without branches, so that a loop applying them to a slice compiles to
//! SIMD code (the kernels in `ops/` are compiled once per instruction set).
//!
//! libm's `expf` and `erff`, which burn-flex calls per element, are exact to an ulp but branchy, so
//! they never vectorise; these trade a few ulps for 8 or 16 lanes per instruction.

/// `e^x`, Cephes' `expf` scheme: `x = n ln2 + r` with `|r| <= ln2 / 2`, a degree-6 polynomial for
/// `e^r`, and `2^n` built in the exponent bits. Relative error within 2e-7 on `[-87, 88]`; inputs are
/// clamped to that range, so `exp(-inf)` is about 1.6e-38 rather than 0 (the kernels zero masked
/// entries explicitly) and large inputs saturate at about 1.65e38 instead of overflowing.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without a branch or a libm call.
    const ROUND: f32 = 12_582_912.0;
    // ln 2 split in two so that `n * LN2_HI` is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    // `shifted` holds n = round(x / ln2) in its low mantissa bits: reading it back from there, rather than
    // with `as i32` (a saturating conversion compilers do not vectorise), keeps the loop in SIMD.
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_65;
    let p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    // n is in [-126, 127] after the clamp: 2^n is a normal float with biased exponent n + 127.
    let biased_exponent = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32).wrapping_add(127);
    e_r * f32::from_bits((biased_exponent as u32) << 23)
}

#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_8) * t - 0.284_496_74) * t + 0.254_829_6) * t;
    (1.0 - poly * exp(-a * a)).copysign(x)
}

/// The exact GELU, `x/2 (1 + erf(x / sqrt 2))` (PyTorch's `gelu`, transformers' `"gelu"`).
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// The derivative of the exact GELU, `Φ(x) + x φ(x)` (the normal distribution's CDF and density).
#[inline(always)]
pub fn gelu_derivative(x: f32) -> f32 {
    const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;
    0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)) + x * FRAC_1_SQRT_2PI * exp(-0.5 * x * x)
}

/// SiLU (swish), `x / (1 + e^-x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(lo: f32, hi: f32, steps: usize) -> impl Iterator<Item = f32> {
        (0..=steps).map(move |i| lo + (hi - lo) * i as f32 / steps as f32)
    }

    #[test]
    fn exp_is_within_2e7_relative_of_std() {
        let mut worst = 0f64;
        for x in grid(-87.0, 88.0, 200_000) {
            let exact = (x as f64).exp();
            worst = worst.max(((exp(x) as f64 - exact) / exact).abs());
        }
        assert!(worst < 2e-7, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
        assert!(exp(f32::INFINITY).is_finite());
    }

    #[test]
    fn erf_and_gelu_are_within_5e7_of_f64() {
        let erf64 = |x: f64| {
            // erf by its series/continued fraction is not in std; integrate exp(-t^2) with Simpson's rule.
            let steps = 2_000;
            let h = x / steps as f64;
            let f = |t: f64| (-t * t).exp();
            let mut sum = f(0.0) + f(x);
            for i in 1..steps {
                sum += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
            }
            sum * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
        };
        for x in grid(-6.0, 6.0, 2_400) {
            let exact = erf64(x as f64);
            assert!((erf(x) as f64 - exact).abs() < 5e-7, "erf({x}) = {} vs {exact}", erf(x));
            let gelu_exact = 0.5 * x as f64 * (1.0 + erf64(x as f64 / std::f64::consts::SQRT_2));
            assert!((gelu(x) as f64 - gelu_exact).abs() < 1e-6, "gelu({x})");
        }
        assert!(erf(0.0).abs() < 1e-7);
        assert_eq!(gelu(-20.0), -0.0);
        assert_eq!(gelu(20.0), 20.0);
    }

    #[test]
    fn gelu_derivative_matches_a_central_difference_of_f64_gelu() {
        let gelu64 = |x: f64| 0.5 * x * (1.0 + libm_free_erf(x / std::f64::consts::SQRT_2));
        for x in grid(-8.0, 8.0, 1_600) {
            let h = 1e-4;
            let exact = (gelu64(x as f64 + h) - gelu64(x as f64 - h)) / (2.0 * h);
            assert!((gelu_derivative(x) as f64 - exact).abs() < 1e-6, "gelu'({x}) = {} vs {exact}", gelu_derivative(x));
        }
    }

    /// erf in f64 from its Taylor series (|x| <= 3) and the asymptotic continued fraction beyond.
    fn libm_free_erf(x: f64) -> f64 {
        let a = x.abs();
        let value = if a <= 3.0 {
            let (mut term, mut sum, mut n) = (a, a, 0.0);
            while term.abs() > 1e-17 * sum.abs() {
                n += 1.0;
                term *= -a * a / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let mut fraction = a;
            for k in (1..60).rev() {
                fraction = a + (k as f64 / 2.0) / fraction;
            }
            1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / fraction
        };
        value.copysign(x)
    }

    #[test]
    fn silu_matches_its_definition() {
        for x in grid(-100.0, 100.0, 20_000) {
            let exact = x as f64 / (1.0 + (-x as f64).exp());
            assert!((silu(x) as f64 - exact).abs() <= 1e-6 * exact.abs().max(1e-3), "silu({x})");
        }
    }
}
