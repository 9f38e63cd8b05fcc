//! A host application's own device and queue: the crate records into the host's encoder and
//! leaves results on the device.

mod common;

use common::{Rng, assert_close, gpu};
use retina_wgpu::gpu::{FocalBuffers, LogitsBuffer, TargetsBuffer};
use retina_wgpu::{Backend, FocalInput, FocalLoss, GpuBuffer, GpuContext, GpuOptions, wgpu};

#[test]
fn records_into_a_host_encoder_on_a_host_device() {
    if gpu().is_none() {
        return;
    }
    // The host creates its device as a renderer would: default limits, no extra features.
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default())).unwrap();
    let (device, queue) = pollster::block_on(adapter.request_device(&Default::default())).unwrap();
    let ctx = GpuContext::from_device(&device, &queue, &GpuOptions::default()).unwrap();
    assert!(
        !ctx.uses_subgroups(),
        "the host did not enable SUBGROUP, so the crate must not use it"
    );

    let mut rng = Rng::new(4);
    let k = 10;
    let logits: Vec<f32> = (0..500 * k).map(|_| rng.normal()).collect();
    let labels: Vec<i32> = (0..500).map(|_| rng.below(12) as i32 - 2).collect();

    // The host owns the buffers (made with its own device), the crate only binds them.
    let host_buffer = |bytes: u64| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("host"),
            size: bytes,
            usage: retina_wgpu::gpu::BUFFER_USAGE,
            mapped_at_creation: false,
        })
    };
    let logits_buf = GpuBuffer::<f32>::from_raw(host_buffer(logits.len() as u64 * 4), logits.len()).unwrap();
    let labels_buf = GpuBuffer::<i32>::from_raw(host_buffer(labels.len() as u64 * 4), labels.len()).unwrap();
    queue.write_buffer(logits_buf.buffer(), 0, bytemuck::cast_slice(&logits));
    queue.write_buffer(labels_buf.buffer(), 0, bytemuck::cast_slice(&labels));
    let grad = GpuBuffer::<f32>::from_raw(host_buffer(logits.len() as u64 * 4), logits.len()).unwrap();
    let loss_out = GpuBuffer::<f32>::from_raw(host_buffer(16), 3).unwrap();

    let mut encoder = device.create_command_encoder(&Default::default());
    ctx.record_focal_loss(
        &mut encoder,
        &FocalLoss::retinanet(),
        &FocalBuffers {
            logits: LogitsBuffer::F32(&logits_buf),
            targets: TargetsBuffer::Labels(&labels_buf),
            num_classes: k,
            loss: &loss_out,
            grad: Some(&grad),
            elementwise: None,
            positives: None,
        },
    )
    .unwrap();
    queue.submit([encoder.finish()]);

    let cpu = FocalLoss::retinanet()
        .compute(&Backend::Cpu, &FocalInput::labels(&logits, &labels, k))
        .unwrap();
    let out = ctx.download(&loss_out).unwrap();
    assert_close("loss", &out[..1], &[cpu.loss], 1e-5, 0.0);
    assert_close(
        "grad",
        &ctx.download(&grad).unwrap(),
        cpu.grad.as_ref().unwrap(),
        1e-5,
        1e-7,
    );

    // A host buffer without the usages the crate needs is refused, not a wgpu panic.
    let vertex_only = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 64,
        usage: wgpu::BufferUsages::VERTEX,
        mapped_at_creation: false,
    });
    assert!(GpuBuffer::<f32>::from_raw(vertex_only, 4).is_err());
    let small = host_buffer(16);
    assert!(GpuBuffer::<f32>::from_raw(small, 5).is_err());
}

#[test]
fn a_missing_adapter_says_how_to_get_one() {
    let err = GpuContext::new_with(GpuOptions {
        adapter_name: Some("no-such-adapter-anywhere".into()),
        ..Default::default()
    })
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, retina_wgpu::Error::NoAdapter(_)), "{text}");
    for hint in ["no-such-adapter-anywhere", "mesa-vulkan-drivers", "CPU backend"] {
        assert!(text.contains(hint), "{text}");
    }
}

#[test]
fn the_async_context_and_readback_give_what_the_blocking_ones_do() {
    if gpu().is_none() {
        return;
    }
    let ctx = pollster::block_on(GpuContext::new_async(GpuOptions::default())).unwrap();
    let data: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5 - 7.0).collect();
    let buffer = ctx.upload(&data).unwrap();
    let back = pollster::block_on(ctx.download_async(&buffer)).unwrap();
    assert_eq!(back, data);
    assert_eq!(ctx.download(&buffer).unwrap(), back);
    // An empty buffer reads back as empty.
    let empty = ctx.zeros::<u32>(0).unwrap();
    assert!(pollster::block_on(ctx.download_async(&empty)).unwrap().is_empty());
}
