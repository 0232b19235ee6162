"""The CPU launchers under concurrency: Python threads with different Numba
thread counts, forked children (as PyTorch DataLoader workers and
multiprocessing's 'fork' start method make them), and the single-threaded BLAS
rule when the caller is not the main thread.

Crash and hang scenarios run in a subprocess with a timeout, so that a
regression fails the test instead of killing or stalling the test run.
"""

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import defconv_np as dc
from defconv_np import _cpu, _cpu_conv

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork and the threading "
                                "layers are exercised on Linux only")

#: Far above what each script needs on 2 cores (a few seconds), far below CI's patience.
SCRIPT_TIMEOUT_S = 90


def _run_script(code, timeout=SCRIPT_TIMEOUT_S, **env):
    """Run ``code`` in a fresh interpreter (this test process's environment plus
    ``env``; a value of None removes the variable) and fail with its output
    unless it exits 0 within ``timeout`` seconds."""
    environ = dict(os.environ)
    for name, value in env.items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    try:
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=environ,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"script hung (no exit in {timeout} s); output so far:\n"
                    f"{exc.stdout}\n{exc.stderr}")
    assert proc.returncode == 0, (f"script exited with {proc.returncode}\n"
                                  f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc.stdout


# -- 2. Python threads with different Numba thread counts -------------------

AT_THREAD_COUNTS = """
    import threading
    import numba

    def at_thread_counts(counts, prepare, check):
        \"\"\"One Python thread per entry of ``counts``, each at that many Numba
        threads: ``state = prepare()``, then, once every thread is ready,
        ``check(state)``. Returns the errors, each with its thread count (a
        failing thread breaks the barrier, so that none waits for it).\"\"\"
        errors = []
        start = threading.Barrier(len(counts))

        def caller(threads):
            try:
                numba.set_num_threads(threads)
                state = prepare()
                start.wait()
                check(state)
            except BaseException as exc:  # reported by the script
                start.abort()
                errors.append(f"{threads} threads: {type(exc).__name__}: {exc}")

        callers = [threading.Thread(target=caller, args=(n,)) for n in counts]
        for t in callers:
            t.start()
        for t in callers:
            t.join()
        return errors
"""

MIXED_THREAD_COUNTS = AT_THREAD_COUNTS + """
    import concurrent.futures
    import threading
    import time
    import numba
    import numpy as np
    import defconv_np as dc
    from defconv_np import _cpu

    # every lane task a call submits must have finished when the call returns
    # or raises, and none may start afterwards
    violations = []
    original_run_on_lanes = _cpu._run_on_lanes

    def checked_run_on_lanes(tasks):
        state = {"running": 0, "returned": False}
        lock = threading.Lock()

        def tracked(task):
            def run():
                with lock:
                    if state["returned"]:
                        violations.append("a lane task started after its call returned")
                    state["running"] += 1
                try:
                    return task()
                finally:
                    with lock:
                        state["running"] -= 1
            return run

        try:
            return original_run_on_lanes([tracked(task) for task in tasks])
        finally:
            with lock:
                state["returned"] = True
                if state["running"]:
                    violations.append(f"call returned with {state['running']} lane tasks running")

    _cpu._run_on_lanes = checked_run_on_lanes

    # hand the GIL to the other callers before each submission, so that their
    # calls interleave with this one's (a pool swapped between two submissions
    # of one call showed up only now and then without this)
    original_submit = concurrent.futures.ThreadPoolExecutor.submit

    def yielding_submit(self, *args, **kwargs):
        time.sleep(0.0002)
        return original_submit(self, *args, **kwargs)

    concurrent.futures.ThreadPoolExecutor.submit = yielding_submit

    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4, 9, 8))
    off = rng.uniform(-2, 2, (6, 18, 9, 8))
    w = rng.standard_normal((3, 4, 3, 3))
    expected = dc.deform_conv2d(x, off, w, padding=1)

    def check(_):
        for _ in range(40):
            got = dc.deform_conv2d(x, off, w, padding=1)
            np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)

    errors = at_thread_counts((2, 3, 4, 2), lambda: None, check)
    assert not errors and not violations, (errors, violations[:5])
    print("ok")
"""


def test_threads_with_different_numba_thread_counts():
    """Threads at 2, 3, 4 and 2 Numba threads call deform_conv2d at once: no
    pool is shut down under a running call, and every call waits for its work."""
    assert _run_script(MIXED_THREAD_COUNTS, NUMBA_NUM_THREADS="4").strip() == "ok"


MIXED_SAMPLERS = AT_THREAD_COUNTS + """
    import numpy as np
    import defconv_np as dc

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 5, 11, 9))
    theta = np.tile(np.array([[0.9, -0.3, 0.1], [0.3, 0.9, -0.2]]), (4, 1, 1))
    grid = dc.affine_grid(theta, x.shape)
    go = rng.standard_normal(x.shape)
    v = rng.standard_normal((2, 3, 7, 6, 5))
    v_grid = rng.uniform(-1.1, 1.1, (2, 4, 5, 6, 3))
    v_go = rng.standard_normal((2, 3, 4, 5, 6))
    shapes = np.array([[6, 5], [3, 2]])
    starts = np.array([0, 30])
    value = rng.standard_normal((2, 36, 2, 4))
    loc = rng.uniform(-0.1, 1.1, (2, 7, 2, 2, 3, 2))
    attn = rng.uniform(0, 1, (2, 7, 2, 2, 3))
    a_go = rng.standard_normal((2, 7, 8))
    off = rng.uniform(-2, 2, (4, 18, 11, 9))
    w = rng.standard_normal((3, 5, 3, 3))

    def every_sampler():
        return [dc.grid_sample(x, grid), *dc.grid_sample_backward(go, x, grid),
                dc.grid_sample(x, grid, mode="bicubic"),
                *dc.grid_sample_backward(go, x, grid, mode="bicubic"),
                dc.grid_sample(v, v_grid), *dc.grid_sample_backward(v_go, v, v_grid),
                dc.ms_deform_attn(value, shapes, starts, loc, attn),
                *dc.ms_deform_attn_backward(a_go, value, shapes, starts, loc, attn),
                dc.deform_conv2d(x, off, w, padding=1)]

    def check(expected):  # what this thread count gave alone
        for _ in range(15):
            for a, b in zip(every_sampler(), expected, strict=True):
                np.testing.assert_array_equal(a, b)

    errors = at_thread_counts((2, 3, 4, 1), every_sampler, check)
    assert not errors, errors
    print("ok")
"""


def test_samplers_from_threads_at_once():
    """Threads at 2, 3, 4 and 1 Numba threads call grid_sample (2-D, bicubic,
    3-D), ms_deform_attn and deform_conv2d, forward and backward, at once (no
    lock serialises them any more): each gets bitwise what it got alone."""
    # a longer limit: on a cold cache the script compiles every sampler kernel
    assert _run_script(MIXED_SAMPLERS, timeout=4 * SCRIPT_TIMEOUT_S,
                       NUMBA_NUM_THREADS="4").strip() == "ok"


# -- 3. fork ---------------------------------------------------------------

FORK_PRELUDE = """
    import os
    import sys
    import threading
    import time
    import numpy as np
    import defconv_np as dc

    # conv2d on its implicit-GEMM path (CBLAS calls) even with 4 channels
    dc.config.cpu_implicit_conv_min_channels = 1
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 4, 12, 11))
    off = rng.uniform(-2, 2, (4, 18, 12, 11))
    w = rng.standard_normal((3, 4, 3, 3))
    go = rng.standard_normal((4, 3, 12, 11))
    theta = np.tile(np.array([[0.9, -0.3, 0.1], [0.3, 0.9, -0.2]]), (4, 1, 1))
    grid = dc.affine_grid(theta, x.shape)
    go_grid = rng.standard_normal((4, 4, 12, 11))

    def every_op():
        return [dc.conv2d(x, w, padding=1),
                *dc.conv2d_backward(go, x, w, padding=1),
                dc.deform_conv2d(x, off, w, padding=1),
                *[g for g in dc.deform_conv2d_backward(go, x, off, w, padding=1)
                  if g is not None],
                dc.grid_sample(x, grid),
                *dc.grid_sample_backward(go_grid, x, grid)]

    def run_child(expected):
        # the child's verdict is its exit status; a kill or hang shows in the parent
        try:
            for a, b in zip(every_op(), expected, strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        except BaseException as exc:
            print(f"child failed: {type(exc).__name__}: {exc}", flush=True)
            os._exit(1)
        os._exit(0)

    def wait_child(pid, timeout=40.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                if os.WIFSIGNALED(status):
                    sys.exit(f"child killed by signal {os.WTERMSIG(status)}")
                if os.WEXITSTATUS(status):
                    sys.exit(f"child exited with {os.WEXITSTATUS(status)}")
                return
            time.sleep(0.05)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        sys.exit(f"child hung: no exit in {timeout} s")
"""

FORK_AFTER_CONVS = FORK_PRELUDE + """
    expected = every_op()       # the parent has run every op (and its thread pools)
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            run_child(expected)
        wait_child(pid)
    assert all(np.array_equal(a, b) for a, b in zip(every_op(), expected))
    print("ok")
"""

FORK_DURING_GRID_SAMPLE = FORK_PRELUDE + """
    from defconv_np import _cpu

    expected = every_op()
    big = rng.standard_normal((8, 16, 64, 64))
    big_grid = dc.affine_grid(np.tile(theta[:1], (8, 1, 1)), (8, 16, 64, 64))

    # the parent thread stays inside grid_sample (its kernel running on the
    # lanes, the calling thread taking a share) until told to stop
    kernel = _cpu.grid_sample_kernels.grid_sample
    inside, stop = threading.Event(), threading.Event()

    def looping_kernel(*args):
        inside.set()
        kernel(*args)
        while not stop.is_set():
            kernel(*args)

    def sampler():
        while not stop.is_set():
            dc.grid_sample(big, big_grid)

    _cpu.grid_sample_kernels.grid_sample = looping_kernel
    thread = threading.Thread(target=sampler)
    thread.start()
    try:
        for _ in range(3):
            inside.wait(30)
            time.sleep(0.01)
            pid = os.fork()
            if pid == 0:
                _cpu.grid_sample_kernels.grid_sample = kernel
                run_child(expected)
            wait_child(pid)
    finally:
        stop.set()
        thread.join()
    _cpu.grid_sample_kernels.grid_sample = kernel
    assert all(np.array_equal(a, b) for a, b in zip(every_op(), expected))
    print("ok")
"""

#: The library's own choice of Numba threading layer, and the workqueue layer
#: named by the user (where the lock inherited through fork used to hang).
LAYERS = [pytest.param(None, id="default-layer"),
          pytest.param("workqueue", id="workqueue")]


@pytest.mark.parametrize("layer", LAYERS)
def test_forked_child_after_convs_runs_every_op(layer):
    """conv2d/deform_conv2d in the parent, then fork: every op and backward
    works in the child (GNU OpenMP used to kill it) and matches the parent."""
    assert _run_script(FORK_AFTER_CONVS, NUMBA_THREADING_LAYER=layer).strip() == "ok"


@pytest.mark.parametrize("layer", LAYERS)
def test_fork_while_another_thread_is_in_grid_sample(layer):
    """A child forked while a parent thread is inside grid_sample (its shares
    running on the lanes and the calling thread; before that, holding the
    launch lock) completes every op instead of hanging on an inherited lock
    or pool."""
    assert _run_script(FORK_DURING_GRID_SAMPLE, NUMBA_THREADING_LAYER=layer).strip() == "ok"


# -- 4. single-threaded BLAS in the lanes, whatever thread calls --------------

def _lane_blas_threads(monkeypatch):
    """Record the BLAS thread counts seen inside the deformable kernels and
    the implicit-GEMM conv's band copies, which run on the lanes between the
    lanes' GEMMs."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    blas = threadpoolctl.ThreadpoolController().select(user_api="blas")
    seen = []

    def recording(kernel):
        def run(*args):
            seen.append(tuple(lib["num_threads"] for lib in blas.info()))
            return kernel(*args)
        return run

    monkeypatch.setattr(_cpu.deform_kernels, "deform_im2col",
                        recording(_cpu.deform_kernels.deform_im2col))
    monkeypatch.setattr(_cpu.deform_kernels, "deform_backward",
                        recording(_cpu.deform_kernels.deform_backward))
    monkeypatch.setattr(_cpu_conv.layout_kernels, "padded_rows",
                        recording(_cpu_conv.layout_kernels.padded_rows))
    return seen


def test_lanes_use_one_blas_thread_from_any_calling_thread(monkeypatch):
    """float32 deform_conv2d and conv2d (its implicit GEMMs, called through
    CBLAS) forward and backward, with GEMMs big enough for BLAS to use
    threads: bitwise the same from the main thread and from another
    thread, and BLAS on one thread inside the lanes either way."""
    if _cpu.column_lanes() < 2:
        pytest.skip("needs two or more Numba threads for the lanes")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 32, 32, 32)).astype(np.float32)
    off = rng.uniform(-2, 2, (4, 18, 32, 32)).astype(np.float32)
    w = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
    go = rng.standard_normal((4, 32, 32, 32)).astype(np.float32)

    def forward_backward():
        return [dc.deform_conv2d(x, off, w, padding=1),
                *[g for g in dc.deform_conv2d_backward(go, x, off, w, padding=1)
                  if g is not None],
                dc.conv2d(x, w, padding=1),
                *dc.conv2d_backward(go, x, w, padding=1, needs=("input", "weight"))[:2]]

    seen = _lane_blas_threads(monkeypatch)
    on_main = forward_backward()
    seen_main, seen[:] = list(seen), []
    box = []
    thread = threading.Thread(target=lambda: box.append(forward_backward()))
    thread.start()
    thread.join()
    on_thread = box[0]
    for a, b in zip(on_main, on_thread, strict=True):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(b, a)
    assert seen_main and seen
    assert set(seen_main) == {(1,) * len(seen_main[0])}, seen_main
    assert set(seen) == {(1,) * len(seen[0])}, seen
