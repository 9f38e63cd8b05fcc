//! The detector from the library: train the small RetinaNet for a few steps on synthetic scenes
//! (CPU backend; `GpuEngine::new(&GpuContext::new()?)?` trains on a GPU instead), save a
//! checkpoint, load it back and detect in a scene it has not seen. `retina demo` is the same
//! with a real budget (4.5 minutes) and pictures.

use retina_wgpu::coco::Normalize;
use retina_wgpu::data::SceneConfig;
use retina_wgpu::model::{Detector, RetinaNet, RetinaNetConfig, checkpoint};
use retina_wgpu::nn::CpuEngine;
use retina_wgpu::train::{SyntheticData, TrainData, TrainOptions, Trainer, synthetic_categories};

fn main() -> retina_wgpu::Result<()> {
    let scenes = SceneConfig::default();
    let config = RetinaNetConfig {
        num_classes: scenes.num_classes(),
        categories: synthetic_categories(&scenes),
        ..RetinaNetConfig::default()
    };
    let net = RetinaNet::new(config)?;
    println!("{} parameters in {} tensors", net.num_scalars(), net.params().len());

    let data = SyntheticData {
        config: scenes.clone(),
        seed: 0,
        normalize: Normalize::IMAGENET,
    };
    let options = TrainOptions {
        steps: 20,
        warmup_steps: 5,
        ..TrainOptions::default()
    };
    let mut trainer = Trainer::new(CpuEngine::new(), net.clone(), &net.init(0), options)?;
    for _ in 0..20 {
        if let Some(loss) = trainer.step(&data, trainer.step_count() % 5 == 4)? {
            println!("step {:>2}: loss {:.4}", trainer.step_count(), loss.total());
        }
    }

    let dir = std::env::temp_dir().join(format!("retina-example-{}", std::process::id()));
    trainer.save(&dir)?;
    let (net, values) = checkpoint::load_model(&dir)?;
    std::fs::remove_dir_all(&dir).map_err(|e| retina_wgpu::Error::io(&dir, e))?;

    // A scene the training never drew (another seed), through the detector.
    let held_out = SyntheticData { seed: 99, ..data };
    let mut image = vec![0.0; 3 * 128 * 128];
    let (boxes, _) = held_out.sample(0, &mut image)?;
    let mut detector = Detector::new(CpuEngine::new(), net, &values)?;
    let detections = detector.detect(&image)?;
    println!(
        "{} objects in the scene; the 3 best of {} detections (20 steps is very little training):",
        boxes.len(),
        detections[0].len()
    );
    let names = scenes.class_names();
    for d in detections[0].iter().take(3) {
        println!(
            "  {:<8} {:.3} {:?}",
            names[d.class as usize],
            d.score,
            d.bbox.map(|v| v.round())
        );
    }
    Ok(())
}
