// Partial sums for the global gradient norm, in two passes over every parameter so that no
// square overflows f32 (a norm of 1e20 has a square of 1e40):
//   FLAG_SCALED off: each workgroup adds |g| over its TILE values (one partial per workgroup);
//     reduce_sum.wgsl adds them into S = sum |g|, a bound on every |g|.
//   FLAG_SCALED on: each workgroup adds (g * 2^-e)^2, where 2^e is the power of two just above S
//     (read from `abs_sum`), so every scaled value is at most 1 and no square overflows; the
//     norm is then 2^e sqrt(sum) (sgd.wgsl). Scaling by a power of two is exact, so without
//     underflow the sum is the unscaled one times 2^-2e, bit for bit.
// No float atomics. src/cpu/nn.rs computes the norm in f64 instead.

//#include "shared/workgroup_reduce.wgsl"

// Must stay in sync with `SumSquaresConfig` in src/gpu/nn.rs.
struct Config {
    n: u32,
    flags: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG_SIZE: u32 = 256u;
const ELEMS_PER_THREAD: u32 = 4u;
const TILE: u32 = WG_SIZE * ELEMS_PER_THREAD;
const FLAG_SCALED: u32 = 1u;

@group(0) @binding(0) var<uniform> cfg: Config;
@group(0) @binding(1) var<storage, read> values: array<f32>;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;
// [S / 1, S, 1] as reduce_sum.wgsl writes it (only read with FLAG_SCALED).
@group(0) @binding(3) var<storage, read> abs_sum: array<f32>;

// The exponent e of the power of two just above `s` (a sum of |g|), in [-126, 126]: 0 for 0,
// 126 for +inf (a sum that overflowed) and NaN. sgd.wgsl has the same function.
fn norm_exponent(s: f32) -> i32 {
    let biased = i32((bitcast<u32>(s) >> 23u) & 0xffu);
    if biased == 0 {
        return 0;
    }
    return clamp(biased - 126, -126, 126);
}

@compute @workgroup_size(WG_SIZE)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) num_wg: vec3<u32>,
    ids: LocalIds,
) {
    let wg_index = wg.x + wg.y * num_wg.x;
    if wg_index * TILE >= cfg.n {
        return;
    }
    let scaled = (cfg.flags & FLAG_SCALED) != 0u;
    var inv_scale = 1.0;
    if scaled {
        inv_scale = bitcast<f32>(u32(127 - norm_exponent(abs_sum[1])) << 23u);
    }
    var acc = 0.0;
    for (var j = 0u; j < ELEMS_PER_THREAD; j = j + 1u) {
        let i = wg_index * TILE + j * WG_SIZE + ids.index;
        if i < cfg.n {
            let v = values[i];
            if scaled {
                let s = v * inv_scale;
                acc = acc + s * s;
            } else {
                acc = acc + abs(v);
            }
        }
    }
    let total = workgroup_sum(acc, ids);
    if ids.index == 0u {
        partials[wg_index] = total;
    }
}
