"""Every CUDA kernel compiles to PTX for Hopper (compute capability 9.0) in both
dtypes, without a GPU: typing errors that the simulator cannot see fail here.
Needs numba-cuda with its NVVM (``pip install "numba-cuda[cu13]"``, the
``ptx`` extra, which the test environment installs)."""

import pytest

from defconv_np import _ptx

pytest.importorskip("cuda.bindings.nvjitlink", reason="numba-cuda[cu13] (NVVM, nvJitLink) absent")


@pytest.fixture(scope="module")
def compiled():
    rows = _ptx.compile_all(cc=(9, 0))
    print("\nkernel                         dtype    regs  spill(st/ld)  smem  f64")
    for r in rows:
        print(f"{r['kernel']:30s} {r['dtype']:8s} {r.get('registers')!s:>4}  "
              f"{r.get('spill_store_bytes')}/{r.get('spill_load_bytes')}"
              f"{'':10s}{r.get('shared_bytes')!s:>4}  {r['f64_instructions']}")
    return rows


def cuda_kernels():
    """Names of every ``cuda.jit`` kernel (not device function) in kernels.cuda."""
    import importlib
    import pkgutil

    import defconv_np.kernels.cuda as package

    names = set()
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for obj in vars(module).values():
            options = getattr(obj, "targetoptions", None)
            if options is not None and not options.get("device") \
                    and obj.py_func.__module__ == module.__name__:
                names.add(obj.py_func.__name__)
    return names


def test_every_kernel_compiles_for_both_dtypes(compiled):
    launched = {(r["kernel"], r["dtype"]) for r in compiled}
    expected = {(name, dtype) for name in cuda_kernels() for dtype in ("float32", "float64")}
    assert len(expected) >= 12
    assert expected <= launched, f"never launched: {sorted(expected - launched)}"
    assert all(".target sm_90" in r["ptx"] for r in compiled)


def test_float32_kernels_do_no_float64_arithmetic(compiled):
    promoted = {r["kernel"]: r["f64_instructions"] for r in compiled
                if r["dtype"] == "float32" and r["f64_instructions"]}
    assert promoted == {}


def test_no_register_spills(compiled):
    spilled = {(r["kernel"], r["dtype"]): (r["spill_store_bytes"], r["spill_load_bytes"])
               for r in compiled if r.get("spill_store_bytes") or r.get("spill_load_bytes")}
    assert spilled == {}
    assert all(r.get("registers") for r in compiled)
