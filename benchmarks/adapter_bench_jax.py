"""JAX adapter overhead: defconv_np.jax against the NumPy functions it calls.

deform_conv2d v2 (with mask) at the CPU benchmark's shape (float32, N=8,
C=O=64, 64x64, 3x3, padding 1; see cpu_bench.py), on CPU JAX:

- forward: ``jax.jit(defconv_np.jax.deform_conv2d)`` (and the eager call)
  against ``defconv_np.deform_conv2d``;
- forward+backward: ``jax.jit(jax.value_and_grad(loss))`` with
  ``loss = sum(deform_conv2d(...) * cotangent)``, gradients for input, offset,
  weight, bias and mask, against ``deform_conv2d`` + ``deform_conv2d_backward``
  (all five gradients) for the same cotangent; and the jit'ed ``jax.vjp`` of
  the op alone (no loss arithmetic) against the same pair.

Each variant is warmed up (compiled), then the variants of a row run in turn,
``--repeats`` rounds, so machine noise hits them alike; the medians are
reported with the overhead ``adapter / numpy - 1``, and the minima with theirs
(less sensitive to other processes on a shared machine). On a busy machine
both swing by +-10%; the adapter's own cost is also measured within each
call, as the call's time minus the time spent inside defconv_np's functions
("outside numpy": conversion, the copy of the results into XLA's buffers,
JAX's dispatch and, for value_and_grad, the loss and its cotangent).

Run:  python benchmarks/adapter_bench_jax.py [--repeats 21]
          [--out benchmarks/results/adapter_jax.json]
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numba
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import defconv_np as dc  # noqa: E402
import defconv_np.jax as dj  # noqa: E402

N, C, O, H, W, K, PAD = 8, 64, 64, 64, 64, 3, 1


class KernelClock:
    """Milliseconds spent inside defconv_np's functions while the adapter runs
    (they wrap the functions that defconv_np.jax calls)."""

    def __init__(self):
        self.ms = 0.0

    def wrap(self, function):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.ms += (time.perf_counter() - t0) * 1e3
        return timed


def interleaved_medians(variants, repeats, clock):
    """Median milliseconds of each ``name -> fn`` after one warm-up call each,
    timed in turn for ``repeats`` rounds; and of each call's time outside the
    NumPy functions (``clock``), the adapter's own cost measured within one call."""
    for fn in variants.values():
        fn()
    times = {name: [] for name in variants}
    outside = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            clock.ms = 0.0
            t0 = time.perf_counter()
            fn()
            total = (time.perf_counter() - t0) * 1e3
            times[name].append(total)
            outside[name].append(total - clock.ms)
    return {name: statistics.median(t) for name, t in times.items()}, times, outside


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "adapter_jax.json"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    dtype = np.float32
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    weight = (rng.standard_normal((O, C, K, K)) * 0.1).astype(dtype)
    bias = rng.standard_normal(O).astype(dtype)
    offset = rng.uniform(-2, 2, (N, 2 * K * K, H, W)).astype(dtype)
    mask = rng.uniform(0, 1, (N, K * K, H, W)).astype(dtype)
    cotangent = rng.standard_normal((N, O, H, W)).astype(dtype)
    numpy_args = (x, offset, weight, bias, mask)
    jax_args = tuple(jnp.asarray(a) for a in numpy_args)
    jax_cotangent = jnp.asarray(cotangent)

    def op(x, offset, weight, bias, mask):
        return dj.deform_conv2d(x, offset, weight, bias, padding=PAD, mask=mask)

    forward_jit = jax.jit(op)
    value_and_grad = jax.jit(jax.value_and_grad(
        lambda *a: jnp.sum(op(*a) * jax_cotangent), argnums=(0, 1, 2, 3, 4)))

    @jax.jit
    def vjp(*a):
        out, pullback = jax.vjp(op, *a)
        return out, pullback(jax_cotangent)

    def numpy_forward():
        return dc.deform_conv2d(x, offset, weight, bias, padding=PAD, mask=mask)

    def numpy_forward_backward():
        out = dc.deform_conv2d(x, offset, weight, bias, padding=PAD, mask=mask)
        return out, dc.deform_conv2d_backward(cotangent, x, offset, weight, padding=PAD, mask=mask)

    # the adapter does not change numbers: check before timing
    assert np.array_equal(np.asarray(forward_jit(*jax_args)), numpy_forward())
    _, grads = vjp(*jax_args)
    expected = numpy_forward_backward()[1]
    for name, grad in zip(("input", "offset", "weight", "bias", "mask"), grads):
        assert np.array_equal(np.asarray(grad), getattr(expected, name)), name

    clock = KernelClock()
    dj._np_deform_conv2d = clock.wrap(dj._np_deform_conv2d)
    dj._np_deform_conv2d_backward = clock.wrap(dj._np_deform_conv2d_backward)
    rows = []
    forward, forward_times, forward_outside = interleaved_medians({
        "numpy": numpy_forward,
        "jax jit": lambda: forward_jit(*jax_args).block_until_ready(),
        "jax eager": lambda: op(*jax_args).block_until_ready(),
    }, args.repeats, clock)
    backward, backward_times, backward_outside = interleaved_medians({
        "numpy": numpy_forward_backward,
        "jax jit value_and_grad": lambda: jax.block_until_ready(value_and_grad(*jax_args)),
        "jax jit vjp": lambda: jax.block_until_ready(vjp(*jax_args)),
    }, args.repeats, clock)
    for op_name, medians, times, outside in (
            ("deform_conv2d v2 forward", forward, forward_times, forward_outside),
            ("deform_conv2d v2 forward+backward", backward, backward_times, backward_outside)):
        base = medians["numpy"]
        for name, ms in medians.items():
            if name == "numpy":
                continue
            fastest, fastest_base = min(times[name]), min(times["numpy"])
            rows.append({"op": op_name, "variant": name, "adapter_ms": round(ms, 2),
                         "numpy_ms": round(base, 2), "overhead": round(ms / base - 1, 4),
                         "adapter_min_ms": round(fastest, 2),
                         "numpy_min_ms": round(fastest_base, 2),
                         "overhead_of_minima": round(fastest / fastest_base - 1, 4),
                         "outside_numpy_ms": round(statistics.median(outside[name]), 2),
                         "outside_over_numpy_min": round(
                             statistics.median(outside[name]) / fastest_base, 4),
                         "adapter_times_ms": [round(t, 2) for t in times[name]],
                         "numpy_times_ms": [round(t, 2) for t in times["numpy"]]})
    result = {
        "machine": platform.machine(), "threads": numba.get_num_threads(),
        "jax": jax.__version__, "jax_backend": jax.default_backend(), "numpy": np.__version__,
        "numba": numba.__version__, "dtype": "float32",
        "shape": {"N": N, "C": C, "O": O, "H": H, "W": W, "k": K, "padding": PAD, "mask": True},
        "repeats": args.repeats, "rows": rows,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    for row in rows:
        print(f"{row['op']:34s} {row['variant']:23s} median {row['adapter_ms']:7.2f} ms "
              f"(numpy {row['numpy_ms']:7.2f}) {row['overhead']:+6.1%}   "
              f"min {row['adapter_min_ms']:7.2f} ms (numpy {row['numpy_min_ms']:7.2f}) "
              f"{row['overhead_of_minima']:+6.1%}   outside numpy "
              f"{row['outside_numpy_ms']:5.2f} ms ({row['outside_over_numpy_min']:+.1%} of min)")


if __name__ == "__main__":
    main()
