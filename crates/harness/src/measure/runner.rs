//! What a measurement runs: a [`Runner`] holds one configuration's
//! prepared buffers and thread pool, runs the call and checks its output.

use attnlab::AttnError;

/// Something that runs one attention call on prepared buffers.
pub trait Runner {
    /// One call.
    fn run(&mut self) -> Result<(), AttnError>;
    /// Max abs error of the last output over at most `rows` sampled query
    /// rows (which ones: [`super::check`]), and the rows checked.
    fn sampled_error(&self, rows: usize) -> (f64, usize);
    /// Decode with a cache that rounds or quantises: the max abs error of
    /// the same rows against the f32 values before storing (`None` where
    /// inputs are used as given).
    fn storage_error(&self, _rows: usize) -> Option<f64> {
        None
    }
    /// The bias buffer the call reads, if it has one (for the time of
    /// reading it once, [`read_once`]).
    fn bias(&self) -> Option<&[f32]> {
        None
    }
    /// Layer rows: the last call's time in the projections and in the
    /// attention, ms ([`attnlab::layer::PhaseTimes`]).
    fn phases_ms(&self) -> Option<(f64, f64)> {
        None
    }
}

/// Reads every value of `x` once (a sum in 16 independent lanes, so that
/// the loop vectorizes and is bound by memory, not by one add chain): what
/// a kernel must at least spend on its bias.
pub fn read_once(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (chunks, tail) = x.as_chunks::<16>();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += *v;
        }
    }
    acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

/// `$body` with `$t` the Rust type of the input dtype `$dtype` (f32, f16
/// or bf16), an error for q8_0 (a KV-cache format: `attn decode`); `$what`
/// names the runner in that error. The one dispatch from a configuration's
/// dtype to a generic runner of Q, K and V.
macro_rules! by_input_type {
    ($dtype:expr, $what:literal, $t:ident => $body:expr) => {
        match $dtype {
            $crate::config::Dtype::F32 => {
                type $t = f32;
                $body
            }
            $crate::config::Dtype::F16 => {
                type $t = attnlab::f16;
                $body
            }
            $crate::config::Dtype::Bf16 => {
                type $t = attnlab::bf16;
                $body
            }
            $crate::config::Dtype::Q8_0 => Err(concat!(
                "q8_0 is a KV-cache format (attn decode): ",
                $what,
                " inputs are f32, f16 or bf16"
            )
            .into()),
        }
    };
}
pub(super) use by_input_type;

/// A started pool of `threads` workers, or `None` for one thread (the
/// call then runs `Par::Seq` on the calling thread).
pub(super) fn thread_pool(threads: usize) -> Result<Option<rayon::ThreadPool>, String> {
    if threads <= 1 {
        return Ok(None);
    }
    let p =
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| e.to_string())?;
    p.install(|| rayon::join(|| (), || ())); // threads started
    Ok(Some(p))
}

/// Runs `f` inside `pool`, or here without one.
pub(super) fn in_pool<R: Send>(
    pool: Option<&rayon::ThreadPool>,
    f: impl FnOnce() -> R + Send,
) -> R {
    match pool {
        Some(p) => p.install(f),
        None => f(),
    }
}
