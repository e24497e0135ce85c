//! Memory and threading guarantees, in a test binary of their own because
//! it installs a counting global allocator: `workspace_bytes` is exactly
//! what a workspace allocates on both flash paths, a call on a caller's
//! workspace allocates nothing, and `Par::Rayon(n)` runs every kernel path
//! on `n` threads.

#[allow(dead_code)]
mod common;

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use attnlab::flash::{KvCache, decode};
use attnlab::naive::reference;
use attnlab::par::last_install_threads;
use attnlab::{
    AttentionKernel, AttnInputs, AttnParams, AttnShape, Flash, Kernel, Layout, Par, TensorViewMut,
};
use common::*;

/// Counts the bytes allocated by the tracked threads (a test's own thread
/// and the workers of the pools it runs kernels on; not the test runner's
/// threads, which print results meanwhile), and by the current thread.
struct Counting;
static BYTES: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    static MINE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    static TRACKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}
// SAFETY: forwards to the system allocator; the counters are an atomic and
// thread-local cells that never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: AllocLayout) -> *mut u8 {
        if TRACKED.try_with(|t| t.get()).unwrap_or(false) {
            BYTES.fetch_add(l.size(), Relaxed);
        }
        let _ = MINE.try_with(|m| m.set(m.get() + l.size()));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: AllocLayout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
}
#[global_allocator]
static ALLOC: Counting = Counting;

/// The counter is process-wide: tests that read it run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Tracks this thread and every worker of the `n`-thread pool of `Par`.
fn track(n: usize) {
    TRACKED.with(|t| t.set(true));
    Par::rayon(n).unwrap().install(|| rayon::broadcast(|_| TRACKED.with(|t| t.set(true)))).unwrap();
}

/// Bytes allocated by the tracked threads while `f` runs.
fn allocated<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = BYTES.load(Relaxed);
    let r = f();
    (r, BYTES.load(Relaxed) - before)
}

/// Bytes allocated by this thread while `f` runs (immune to pool threads
/// that are still starting up).
fn allocated_here<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = MINE.with(|m| m.get());
    let r = f();
    (r, MINE.with(|m| m.get()) - before)
}

fn shape(hq: usize, hkv: usize, nq: usize, nk: usize, d: usize) -> AttnShape {
    AttnShape::builder().q_heads(hq).kv_heads(hkv).q_len(nq).kv_len(nk).head_dim(d).build().unwrap()
}

fn two() -> Par {
    Par::rayon(2).unwrap()
}

#[test]
fn workspace_bytes_is_what_a_workspace_allocates_on_both_paths() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    two().install(|| ()).unwrap(); // start the 2-thread pool outside the measurement
    let flash = Flash::default();
    let p = AttnParams::causal();
    for (s, split) in [
        (shape(8, 2, 1000, 1000, 64), false),
        (shape(4, 4, 70, 300, 24), false),
        (shape(8, 2, 1, 5000, 64), true),
        (shape(32, 8, 4, 40000, 128), true),
    ] {
        assert_eq!(flash.path(&s) == attnlab::flash::Path::SplitKv, split);
        for par in [Par::Seq, two()] {
            let (ws, bytes) = allocated_here(|| flash.workspace(&s, par).unwrap());
            assert_eq!(bytes, flash.workspace_bytes(&s, &p, par), "{s:?} {par:?}");
            assert_eq!(bytes, ws.bytes(), "{s:?} {par:?}");
        }
    }
    let mut cache = KvCache::<f32>::new(1, 8, 3000, 64, 64).unwrap();
    cache.append(0, &vec![0.5; 8 * 2500 * 64], &vec![0.5; 8 * 2500 * 64]).unwrap();
    let qs = cache.query_shape(32, 1).unwrap();
    let (ws, bytes) = allocated_here(|| attnlab::flash::decode::workspace(&qs, two()).unwrap());
    assert_eq!(bytes, ws.bytes());
}

#[test]
fn no_allocation_on_a_caller_workspace() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    track(2);
    let flash = Flash::default();
    // tiled (sequential: its parallel scheduler spawns rayon tasks) and
    // split-KV (sequential and on 2 threads)
    let cases = [
        (shape(4, 2, 256, 256, 64), Par::Seq),
        (shape(4, 2, 2048, 2048, 64), Par::Seq),
        (shape(8, 2, 3, 3000, 64), Par::Seq),
        (shape(8, 2, 3, 3000, 64), two()),
    ];
    for (s, par) in cases {
        let (q, k, v) = make_inputs(&s, 1.0, 9);
        let inputs = AttnInputs::from_slices(s, Layout::Bhnd, &q, &k, &v).unwrap();
        let mut out = vec![0f32; s.out_dims().iter().product()];
        let mut lse = vec![0f32; s.lse_len()];
        let mut ws = flash.workspace(&s, par).unwrap();
        let mut view = TensorViewMut::new("out", &mut out, s.out_dims(), Layout::Bhnd).unwrap();
        let params = AttnParams::causal();
        // once to let pool threads settle (thread-locals on first use), then measured
        flash.forward_in(&inputs, &mut view, Some(&mut lse), &params, par, &mut ws).unwrap();
        let (r, bytes) = allocated(|| {
            flash.forward_in(&inputs, &mut view, Some(&mut lse), &params, par, &mut ws)
        });
        r.unwrap();
        assert_eq!(bytes, 0, "{s:?} {par:?}: the kernel allocated {bytes} bytes");
        // and the result is right
        let r = reference(&inputs, &params);
        let tol = tolerance(&inputs, &params);
        assert_matches("caller workspace", &s, Layout::Bhnd, (&out, &lse), &r, &tol);
    }
    // decode on a caller workspace, across appends
    let mut cache = KvCache::<f32>::new(1, 2, 2000, 32, 32).unwrap();
    let qs = cache.query_shape(8, 1).unwrap();
    let mut ws = attnlab::flash::decode::workspace(&qs, Par::Seq).unwrap();
    let (q, mut out) = (vec![0.25f32; 8 * 32], vec![0f32; 8 * 32]);
    for step in 0..3 {
        cache.append(0, &vec![0.5; 2 * 600 * 32], &vec![1.0; 2 * 600 * 32]).unwrap();
        let qs = cache.query_shape(8, 1).unwrap();
        let p = AttnParams::causal();
        let (r, bytes) =
            allocated(|| attnlab::flash::decode_in(&cache, &qs, &q, &mut out, None, &p, &mut ws));
        r.unwrap();
        assert_eq!(bytes, 0, "decode step {step} allocated {bytes} bytes");
        assert!(out.iter().all(|&x| (x - 1.0).abs() < 1e-6));
        // with saturation statistics: no more (600·(step + 1) equal keys)
        let (mut mp, mut ent) = (vec![0f32; 8], vec![0f32; 8]);
        let (r, bytes) = allocated(|| {
            let st = attnlab::StatsMut { max_p: &mut mp, entropy: &mut ent };
            attnlab::flash::decode_in_with_stats(&cache, &qs, &q, &mut out, None, st, &p, &mut ws)
        });
        r.unwrap();
        assert_eq!(bytes, 0, "decode step {step} with statistics allocated {bytes} bytes");
        let n = 600.0 * (step + 1) as f32;
        assert!(ent.iter().all(|&h| (h - n.ln()).abs() < 1e-4), "{ent:?}");
    }
}

#[test]
fn a_repeated_call_reuses_its_workspace() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for s in [shape(4, 2, 300, 300, 32), shape(8, 2, 2, 900, 32)] {
        let (q, k, v) = make_inputs(&s, 1.0, 4);
        let inputs = AttnInputs::from_slices(s, Layout::Bhnd, &q, &k, &v).unwrap();
        let mut out = vec![0f32; s.out_dims().iter().product()];
        let p = AttnParams::causal();
        let flash = Flash::default();
        let mut call = || {
            let mut view = TensorViewMut::new("out", &mut out, s.out_dims(), Layout::Bhnd).unwrap();
            flash.forward(&inputs, &mut view, None, &p, Par::Seq).unwrap()
        };
        let ((), first) = allocated_here(&mut call);
        let ((), second) = allocated_here(&mut call);
        assert!(first >= flash.workspace_bytes(&s, &p, Par::Seq), "{s:?}: first call {first} B");
        assert_eq!(second, 0, "{s:?}: the second call allocated {second} B");
    }
}

#[test]
fn par_rayon_n_runs_every_path_on_n_threads() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s_tiled = shape(4, 2, 100, 100, 16);
    let s_split = shape(4, 2, 2, 1500, 16);
    let (q, k, v) = make_inputs(&s_tiled, 1.0, 1);
    let tiled = AttnInputs::from_slices(s_tiled, Layout::Bhnd, &q, &k, &v).unwrap();
    let (q2, k2, v2) = make_inputs(&s_split, 1.0, 2);
    let split = AttnInputs::from_slices(s_split, Layout::Bhnd, &q2, &k2, &v2).unwrap();
    let mut cache = KvCache::<f32>::new(1, 2, 1500, 16, 16).unwrap();
    cache.append(0, &k2, &v2).unwrap();
    let p = AttnParams::causal();
    let other = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for t in 1..=3 {
        for par in [Par::rayon(t).unwrap(), Par::Seq] {
            let want = par.threads();
            let run = |k: Kernel, inp: &AttnInputs<'_, f32>| {
                let s = inp.shape();
                let mut o = vec![0f32; s.out_dims().iter().product()];
                let mut view =
                    TensorViewMut::new("out", &mut o, s.out_dims(), Layout::Bhnd).unwrap();
                // from inside a pool of another size: Par, not the pool, decides
                other.install(|| {
                    k.forward(inp, &mut view, None, &p, par).unwrap();
                    last_install_threads()
                })
            };
            assert_eq!(run(Kernel::Naive, &tiled), Some(want), "naive {par:?}");
            assert_eq!(run(Kernel::Oracle, &tiled), Some(want), "oracle {par:?}");
            assert_eq!(run(Kernel::Flash, &tiled), Some(want), "flash tiled {par:?}");
            assert_eq!(run(Kernel::Flash, &split), Some(want), "flash split-KV {par:?}");
            let qs = cache.query_shape(4, 2).unwrap();
            let mut o = vec![0f32; 4 * 2 * 16];
            let got = other.install(|| {
                decode(&cache, &qs, split.q.data(), &mut o, None, &p, par).unwrap();
                last_install_threads()
            });
            assert_eq!(got, Some(want), "decode {par:?}");
        }
    }
    let _ = Flash::default().name();
}

#[test]
fn backward_workspace_is_exact_and_a_caller_workspace_run_allocates_nothing() {
    use attnlab::{BackwardInputs, BackwardKernel, GradsMut};
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    track(2);
    let flash = Flash::default();
    // MHA (one chunk per head) and MQA (8 chunks: dQ partials), causal
    for s in [shape(8, 8, 300, 300, 64), shape(4, 1, 200, 260, 24)] {
        let p = AttnParams::causal();
        for par in [Par::Seq, two()] {
            let (ws, bytes) = allocated_here(|| flash.backward_workspace(&s, &p, par).unwrap());
            assert_eq!(bytes, flash.backward_workspace_bytes(&s, &p, par), "{s:?} {par:?}");
            assert_eq!(bytes, ws.bytes(), "{s:?} {par:?}");
        }
        let (q, k, v) = make_inputs(&s, 1.0, 4);
        let inputs = AttnInputs::from_slices(s, Layout::Bhnd, &q, &k, &v).unwrap();
        let fwd = attnlab::attention(&s, &q, &k, &v, &p).unwrap();
        let d_out = random(fwd.out.len(), 1.0, &mut rng(5));
        let bwd = BackwardInputs::new(
            inputs,
            attnlab::TensorView::new("out", &fwd.out, s.out_dims(), Layout::Bhnd).unwrap(),
            &fwd.lse,
            attnlab::TensorView::new("d_out", &d_out, s.out_dims(), Layout::Bhnd).unwrap(),
        )
        .unwrap();
        let n = |d: [usize; 4]| d.iter().product::<usize>();
        let (mut dq, mut dk, mut dv) =
            (vec![0f32; n(s.q_dims())], vec![0f32; n(s.k_dims())], vec![0f32; n(s.v_dims())]);
        let mut ws = flash.backward_workspace(&s, &p, Par::Seq).unwrap();
        let mut g = GradsMut::from_slices(&s, Layout::Bhnd, &mut dq, &mut dk, &mut dv).unwrap();
        // Sequential: the parallel scheduler spawns rayon tasks, which allocate.
        flash.backward_in(&bwd, &mut g, &p, Par::Seq, &mut ws).unwrap();
        let (r, bytes) = allocated(|| flash.backward_in(&bwd, &mut g, &p, Par::Seq, &mut ws));
        r.unwrap();
        assert_eq!(bytes, 0, "{s:?}: the backward allocated {bytes} bytes");
        // and it computed the same as a call that allocates its own
        let mut want =
            [vec![0f32; n(s.q_dims())], vec![0f32; n(s.k_dims())], vec![0f32; n(s.v_dims())]];
        let [a, b, c] = &mut want;
        let mut gw = GradsMut::from_slices(&s, Layout::Bhnd, a, b, c).unwrap();
        flash.backward(&bwd, &mut gw, &p, Par::Seq).unwrap();
        assert!(dq == want[0] && dk == want[1] && dv == want[2], "{s:?}");
        assert!(dq.iter().any(|x| *x != 0.0));
    }
}
