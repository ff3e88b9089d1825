"""The ctypes declarations of the Python bindings against include/grass.h: every function a
binding declares must exist in the header with the same number of arguments, the same
argument and return types (as the C ABI passes them), and every struct a binding mirrors must
have the header's fields in the header's order with the same types.

Runs without building anything: the bindings' tables are read as declared (the JAX one from
``grass_jax._lib._PROTOTYPES``, the PyTorch one from ``grass_torch._SIGNATURES`` plus the
declarations ``Lib`` makes itself, recorded by loading it against a stand-in library)."""
import ctypes
import os
import re
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HEADER = os.path.join(ROOT, "include", "grass.h")

BASE = {
    "int64_t": ctypes.c_int64, "int32_t": ctypes.c_int32, "uint32_t": ctypes.c_uint32,
    "uint64_t": ctypes.c_uint64, "size_t": ctypes.c_size_t, "float": ctypes.c_float,
    "double": ctypes.c_double, "char": ctypes.c_char, "void": None,
}


def _strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"^\s*#[^\n]*", "", text, flags=re.M)


def parse_header(path=HEADER):
    """(functions: name -> (return type, [argument types]), structs: name -> [(field, type)]),
    types as (base, pointer depth) with typedefs resolved."""
    text = _strip_comments(open(path).read())
    typedefs = {name: base for base, name in re.findall(r"typedef\s+(\w+)\s+(\w+)\s*;", text)}
    enums = set(re.findall(r"enum\s+(\w+)", text))

    def ctype(decl):
        decl = decl.replace("const", " ").replace("struct", " struct ")
        depth = decl.count("*")
        words = decl.replace("*", " ").split()
        if words and words[0] == "struct":
            return ("struct " + words[1], depth)
        base = words[0]
        while base in typedefs:
            base = typedefs[base]
        if base in enums:
            base = "int32_t"  # C++: enum : int32_t; C: int, 32 bits on every target grass supports
        return (base, depth)

    functions = {}
    for ret, name, args in re.findall(r"([\w\s\*]+?)\s*\b(grass_\w+)\s*\(([^;{}]*?)\)\s*;", text):
        params = [] if args.strip() in ("", "void") else [a.strip() for a in args.split(",")]
        types = []
        for p in params:
            m = re.match(r"(.*?)(\w+)$", p.strip(), re.S)
            types.append(ctype(m.group(1)))
        functions[name] = (ctype(ret), types)
    structs = {}
    for name, body in re.findall(r"struct\s+(grass_\w+)\s*\{([^}]*)\}", text):
        fields = []
        for decl in body.split(";"):
            decl = decl.strip()
            if not decl:
                continue
            m = re.match(r"(.*?)(\w+)$", decl, re.S)
            fields.append((m.group(2), ctype(m.group(1))))
        structs[name] = fields
    return functions, structs


def _pointer_depth_and_base(t):
    """A ctypes type as (base, pointer depth); c_void_p is ('void*', 1): any data pointer."""
    depth = 0
    while isinstance(t, type) and issubclass(t, ctypes._Pointer):
        depth += 1
        t = t._type_
    if t is ctypes.c_void_p:
        return ("void*", depth + 1)
    if t is ctypes.c_char_p:
        return (ctypes.c_char, depth + 1)
    return (t, depth)


def mismatch(c_type, py_type, structs, where):
    """None when the ctypes type passes like the C type, else why not."""
    base, depth = c_type
    pbase, pdepth = _pointer_depth_and_base(py_type)
    if depth == 0:
        want = BASE[base]
        if py_type is None and want is None:
            return None
        if pbase is want and pdepth == 0:
            return None
        if (want is not None and pdepth == 0 and isinstance(pbase, type)
                and issubclass(pbase, ctypes._SimpleCData)
                and ctypes.sizeof(pbase) == ctypes.sizeof(want) and pbase._type_ == want._type_):
            return None
        return f"{where}: C {base} but ctypes {py_type}"
    if py_type is None:
        return f"{where}: C pointer but ctypes None"
    if pbase == "void*" and pdepth == 1:
        return None  # an untyped address stands for any data pointer
    if pdepth != depth:
        return f"{where}: C {base} with {depth} '*' but ctypes {py_type}"
    if pbase == "void*":
        return None
    if base.startswith("struct "):
        name = base.split()[1]
        if not (isinstance(pbase, type) and issubclass(pbase, ctypes.Structure)):
            return f"{where}: C {base}* but ctypes {py_type}"
        return struct_mismatch(name, pbase, structs)
    want = BASE[base]
    if want is None:
        return f"{where}: C void* needs c_void_p, not {py_type}"
    if pbase is want or (ctypes.sizeof(pbase) == ctypes.sizeof(want) and pbase._type_ == want._type_):
        return None
    return f"{where}: C {base}* but ctypes {py_type}"


def struct_mismatch(name, cls, structs):
    if name not in structs:
        return f"{cls.__name__} mirrors {name}, which grass.h does not define"
    c_fields = structs[name]
    py_fields = list(cls._fields_)
    if [f for f, _ in c_fields] != [f for f, _ in py_fields]:
        return f"{cls.__name__}: fields {[f for f, _ in py_fields]} but {name} has {[f for f, _ in c_fields]}"
    for (field, ct), (_, pt) in zip(c_fields, py_fields):
        why = mismatch(ct, pt, structs, f"{name}.{field}")
        if why:
            return why
    return None


def check_declarations(declared, label):
    """declared: name -> (restype, argtypes). Returns the list of problems."""
    functions, structs = parse_header()
    problems = []
    for name, (res, args) in sorted(declared.items()):
        if name not in functions:
            problems.append(f"{label}: {name} is not in grass.h")
            continue
        c_ret, c_args = functions[name]
        if len(args) != len(c_args):
            problems.append(f"{label}: {name} takes {len(c_args)} arguments in grass.h, "
                            f"ctypes declares {len(args)}")
            continue
        why = mismatch(c_ret, res, structs, f"{label}: {name} return")
        if why:
            problems.append(why)
        for i, (ct, pt) in enumerate(zip(c_args, args)):
            why = mismatch(ct, pt, structs, f"{label}: {name} argument {i}")
            if why:
                problems.append(why)
    return problems


def test_header_parses():
    functions, structs = parse_header()
    assert len(functions) > 30, sorted(functions)
    assert functions["grass_version"] == (("char", 1), [])
    assert functions["grass_context_destroy"] == (("void", 0), [("struct grass_context", 1)])
    assert functions["grass_dtype_size"] == (("size_t", 0), [("int32_t", 0)])
    assert [f for f, _ in structs["grass_adamw_config"]][0] == "struct_size"


def test_the_check_catches_mismatches():
    c = ctypes
    good = {"grass_select_workspace_size": (c.c_int32, [c.c_void_p, c.c_int64, c.c_int64,
                                                        c.POINTER(c.c_size_t)])}
    assert check_declarations(good, "t") == []
    for bad in ([c.c_void_p, c.c_int32, c.c_int64, c.POINTER(c.c_size_t)],   # int32 for int64
                [c.c_void_p, c.c_int64, c.c_int64],                          # one short
                [c.c_void_p, c.c_int64, c.c_int64, c.POINTER(c.c_int32)],    # int32* for size_t*
                [c.c_void_p, c.c_int64, c.c_float, c.POINTER(c.c_size_t)]):  # float for int64
        assert check_declarations({"grass_select_workspace_size": (c.c_int32, bad)}, "t"), bad
    assert check_declarations({"grass_no_such_function": (c.c_int32, [])}, "t")
    assert check_declarations({"grass_version": (c.c_int32, [])}, "t")  # returns char*

    class Wrong(c.Structure):
        _fields_ = [("struct_size", c.c_size_t), ("side", c.c_int32), ("rank", c.c_int32)]
    assert check_declarations({"grass_projection_config_init": (c.c_int32, [c.POINTER(Wrong)])}, "t")


def _jax_declarations():
    sys.path.insert(0, os.path.join(ROOT, "bindings", "jax"))
    try:
        from grass_jax import _lib
    finally:
        sys.path.pop(0)
    return dict(_lib._PROTOTYPES)


class _RecordingLibrary:
    """Stands in for ctypes.CDLL: records what ``Lib`` declares on each function."""

    def __init__(self, *_a, **_k):
        self.functions = {}

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        fn = self.functions.get(name)
        if fn is None:
            fn = type("Fn", (), {"argtypes": None, "restype": ctypes.c_int})()
            self.functions[name] = fn
        return fn


def _torch_declarations(monkeypatch):
    sys.path.insert(0, os.path.join(ROOT, "bindings", "torch"))
    try:
        import grass_torch
    finally:
        sys.path.pop(0)
    monkeypatch.setattr(grass_torch.ctypes, "CDLL", _RecordingLibrary)
    lib = grass_torch.Lib("stand-in")
    out = {}
    for name, fn in lib.dll.functions.items():
        if fn.argtypes is None:
            raise AssertionError(f"grass_torch uses {name} without declaring its arguments")
        out[name] = (fn.restype, list(fn.argtypes))
    return out


def test_jax_ctypes_match_the_header():
    declared = _jax_declarations()
    assert len(declared) >= 10
    assert check_declarations(declared, "grass_jax._lib") == []


def test_torch_ctypes_match_the_header(monkeypatch):
    declared = _torch_declarations(monkeypatch)
    assert "grass_sparse_adamw_step" in declared and "grass_last_error_message" in declared
    assert check_declarations(declared, "grass_torch") == []


def test_mirrored_structs_match_the_header():
    _, structs = parse_header()
    sys.path.insert(0, os.path.join(ROOT, "bindings", "torch"))
    try:
        import grass_torch
    finally:
        sys.path.pop(0)
    mirrors = [(grass_torch.ProjectionConfig, "grass_projection_config"),
               (grass_torch.AdamWConfig, "grass_adamw_config")]
    sys.path.insert(0, os.path.join(ROOT, "bindings", "jax"))
    try:
        from grass_jax import _lib, memory
    finally:
        sys.path.pop(0)
    mirrors += [(_lib._AdamWConfig, "grass_adamw_config"),
                (_lib._ProjectionConfig, "grass_projection_config"),
                (memory.MemoryLayer, "grass_memory_layer"),
                (memory.MemoryReport, "grass_memory_report")]
    problems = [struct_mismatch(name, cls, structs) for cls, name in mirrors]
    assert [p for p in problems if p] == []


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
