// The gamma and beta gradients of one channel from the per-(image, channel) sums
// S[n, c] = (sum dy, sum dy * xhat) of group_norm_grad_sums.wgsl or group_norm_backward.wgsl,
// summed over the images in order (batch steps), written to (or with FLAG_ACCUMULATE added to)
// dbeta[c] and dgamma[c]. Shared by group_norm_grad_coef.wgsl and
// group_norm_param_grads.wgsl; the including kernel declares `cfg`, `sums`, `dgamma`, `dbeta`.
fn channel_param_grads(c: u32) {
    var dy_sum = 0.0;
    var dy_xhat = 0.0;
    for (var n = 0u; n < cfg.batch; n = n + 1u) {
        let p = n * cfg.channels + c;
        dy_sum = dy_sum + sums[2u * p];
        dy_xhat = dy_xhat + sums[2u * p + 1u];
    }
    if (cfg.flags & FLAG_ACCUMULATE) != 0u {
        dbeta[c] = dbeta[c] + dy_sum;
        dgamma[c] = dgamma[c] + dy_xhat;
    } else {
        dbeta[c] = dy_sum;
        dgamma[c] = dy_xhat;
    }
}
