// Per-channel sums of an NCHW tensor (the bias gradient of a convolution: dB[c] = sum over
// b, y, x of dY[b, c, y, x]): one workgroup per channel, a strided walk over its batch x H x W
// elements, then a tree sum (shared/workgroup_reduce.wgsl). No atomics. With FLAG_ACCUMULATE
// the sums are added to what `sums` holds (a layer used several times sums its gradients in
// place).

//#include "shared/workgroup_reduce.wgsl"

// Must stay in sync with `ChannelSumConfig` in src/gpu/nn.rs.
struct Config {
    batch: u32,
    channels: u32,
    plane: u32,
    flags: u32,
}

const FLAG_ACCUMULATE: u32 = 1u;

const WG_SIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> input: array<f32>;
@group(0) @binding(2) var<storage, read_write> sums: array<f32>;

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    ids: LocalIds,
) {
    let c = wg.x + wg.y * num_wg.x;
    if c >= cfg.channels {
        return;
    }
    var acc = 0.0;
    let count = cfg.batch * cfg.plane;
    for (var e = ids.index; e < count; e = e + WG_SIZE) {
        let b = e / cfg.plane;
        acc = acc + input[(b * cfg.channels + c) * cfg.plane + e % cfg.plane];
    }
    let total = workgroup_sum(acc, ids);
    if ids.index == 0u {
        if (cfg.flags & FLAG_ACCUMULATE) != 0u {
            sums[c] = sums[c] + total;
        } else {
            sums[c] = total;
        }
    }
}
