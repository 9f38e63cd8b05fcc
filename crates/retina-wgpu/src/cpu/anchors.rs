//! CPU twin of `shaders/anchors.wgsl`.

use crate::error::Result;
use crate::ops::anchors::AnchorConfig;

/// The anchors of an image of `height x width` in the documented order (the configuration is
/// assumed valid; a stride of 0 or a count the host cannot hold is an error): cell centre
/// `((col + offset) stride, (row + offset) stride)` plus the cell's templates, computed in f32
/// exactly as the shader does.
pub fn generate(config: &AnchorConfig, height: u32, width: u32) -> Result<Vec<[f32; 4]>> {
    let templates = config.cell_templates();
    let n = config.num_anchors(height, width)?;
    let mut out = crate::nn::host_capacity(n, &format!("anchors for {height} x {width}"))?;
    for ((&stride, (rows, cols)), cell) in config.strides.iter().zip(config.grid(height, width)?).zip(&templates) {
        let stride = stride as f32;
        for y in 0..rows {
            let cy = (y as f32 + config.offset) * stride;
            for x in 0..cols {
                let cx = (x as f32 + config.offset) * stride;
                out.extend(cell.iter().map(|t| [cx + t[0], cy + t[1], cx + t[2], cy + t[3]]));
            }
        }
    }
    Ok(out)
}
