//! Renders sample charts of each kind the application draws, for a look at the renderer:
//! a training-loss chart with a log y axis and two noisy series (as `retina demo` draws), an
//! AP-against-gamma chart (as `retina ablate`) and a cumulative-distribution chart (the paper's
//! Figure 4), and the loss and distribution charts again at 400 x 250.
//!
//! ```text
//! cargo run -p retina-cli --example charts -- DIR    # default: retina-charts/ in the temporary directory
//! ```

use std::path::PathBuf;

use retina_cli::plot::{Chart, Series};

/// A deterministic uniform number in [0, 1) (xorshift).
fn uniform(state: &mut u64) -> f64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state >> 11) as f64 / (1u64 << 53) as f64
}

fn main() -> retina_wgpu::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map_or_else(|| std::env::temp_dir().join("retina-charts"), PathBuf::from);
    std::fs::create_dir_all(&dir).map_err(|e| retina_wgpu::Error::io(&dir, e))?;
    let mut state = 0x2545_f491_4f6c_dd1du64;

    let mut curve = |start: f64, floor: f64, rate: f64, noise: f64| -> Vec<(f64, f64)> {
        (0..=3000)
            .step_by(10)
            .map(|step| {
                let t = f64::from(step);
                let mean = floor + (start - floor) * (-t / rate).exp();
                (t, mean * (1.0 + noise * (uniform(&mut state) - 0.5)))
            })
            .collect()
    };
    let loss = Chart {
        title: "Training loss (focal + smooth L1, per positive anchor)".into(),
        x_label: "step".into(),
        y_label: "loss".into(),
        log_y: true,
        series: vec![
            Series::new("focal (class)", [220, 60, 50], curve(1.2, 0.02, 400.0, 0.4)),
            Series::new("smooth L1 (box)", [40, 110, 220], curve(0.9, 0.08, 700.0, 0.2)),
        ],
        ..Chart::default()
    };
    loss.save_png(dir.join("loss_log.png"))?;

    let gammas = [0.0, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0];
    let ap = [30.1, 31.0, 31.4, 32.9, 33.7, 34.0, 32.2];
    let ap50 = [49.5, 50.1, 50.6, 51.7, 52.0, 52.5, 50.0];
    let line = |values: &[f64], shift: f64| gammas.iter().zip(values).map(|(&g, &v)| (g, v + shift)).collect();
    let ap_chart = Chart {
        title: "AP against gamma (best alpha at each gamma, over seeds)".into(),
        x_label: "gamma".into(),
        y_label: "AP (%)".into(),
        series: vec![
            Series::new("AP50", [0, 130, 200], line(&ap50, 0.0)),
            Series::new("AP", [230, 25, 75], line(&ap, 0.0)),
            Series::new("AP + std", [128, 0, 0], line(&ap, 0.6)),
            Series::new("AP - std", [128, 0, 0], line(&ap, -0.6)),
        ],
        ..Chart::default()
    };
    ap_chart.save_png(dir.join("ap_vs_gamma.png"))?;

    let colours = [
        [230, 25, 75],
        [0, 130, 200],
        [60, 180, 75],
        [245, 130, 48],
        [145, 30, 180],
    ];
    let series = [0.0, 0.5, 1.0, 2.0, 5.0]
        .iter()
        .zip(colours)
        .map(|(&gamma, colour)| {
            // The cumulative share of n sorted losses, heavier-tailed as gamma grows.
            let n = 300;
            let losses: Vec<f64> = (1..=n)
                .map(|i| (f64::from(i) / f64::from(n)).powf(1.0 + 3.0 * gamma))
                .collect();
            let total: f64 = losses.iter().sum();
            let mut sum = 0.0;
            let mut points = vec![(0.0, 0.0)];
            for (i, l) in losses.iter().enumerate() {
                sum += l;
                points.push(((i + 1) as f64 / f64::from(n), sum / total));
            }
            Series::new(format!("gamma = {gamma}"), colour, points)
        })
        .collect();
    let cdf = Chart {
        title: "Figure 4: cumulative normalised loss, negative samples".into(),
        x_label: "fraction of negative samples (ascending loss)".into(),
        y_label: "cumulative normalised loss".into(),
        series,
        ..Chart::default()
    };
    cdf.save_png(dir.join("cdf.png"))?;
    // Small charts get smaller text.
    for (chart, name) in [(loss, "loss_log_small.png"), (cdf, "cdf_small.png")] {
        let small = Chart {
            width: 400,
            height: 250,
            ..chart
        };
        small.save_png(dir.join(name))?;
    }
    println!(
        "wrote loss_log.png, ap_vs_gamma.png, cdf.png and (400 x 250) loss_log_small.png and cdf_small.png to {}",
        dir.display()
    );
    Ok(())
}
