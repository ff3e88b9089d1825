//! Enum codes live once, in core's `#[repr(i32)]` enums (`grass::core::codes`). The C header
//! is generated from src/ffi, whose constants are asserted equal to them at compile time;
//! this checks that the header names every value of every enum and nothing else, and that the
//! copies the kernels and the Python bindings must keep (they cannot include grass.h: NVRTC
//! compiles the kernels without it, and ctypes reads no headers) agree with the header.

use std::collections::BTreeMap;
use std::path::Path;

use grass::core::codes::{Code, DeviceKind, StepOutcome};
use grass::core::config::{DecayMode, Method, RefreshMode, Scaling, Side};
use grass::core::dtype::Dtype;
use grass::ErrorKind;

type Codes = BTreeMap<String, i64>;

fn read(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn int(s: &str) -> Option<i64> {
    s.trim().trim_end_matches(',').parse().ok()
}

/// `#define NAME <integer>` lines of a C or CUDA file.
fn defines(text: &str) -> Codes {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "#define").then_some(())?;
            let name = w.next()?;
            let value = int(w.next()?)?;
            w.next().is_none().then(|| (name.to_string(), value))
        })
        .collect()
}

/// The `#define GRASS_*` constants and the values of `enum grass_status` in grass.h.
fn header() -> Codes {
    let h = read("include/grass.h");
    let mut codes = defines(&h);
    let start = h
        .find("enum grass_status")
        .expect("grass.h has enum grass_status");
    let body = &h[start..start + h[start..].find('}').unwrap()];
    for l in body.lines() {
        if let Some((name, value)) = l.trim().split_once(" = ") {
            codes.insert(name.to_string(), int(value).expect("status value"));
        }
    }
    codes
}

/// The entries of `codes` whose names start with `prefix`, with the prefix replaced.
fn with_prefix(codes: &Codes, prefix: &str, renamed: &str) -> Codes {
    codes
        .iter()
        .filter_map(|(k, &v)| Some((format!("{renamed}{}", k.strip_prefix(prefix)?), v)))
        .collect()
}

/// `PREFIX + LABEL` -> code for every value of `T`.
fn of<T: Code>() -> Codes {
    T::ALL
        .iter()
        .map(|v| {
            (
                format!("{}{}", T::PREFIX, v.label().to_uppercase()),
                v.code() as i64,
            )
        })
        .collect()
}

fn same(what: &str, got: &Codes, want: &Codes) {
    assert!(!want.is_empty(), "{what}: nothing to compare");
    assert_eq!(got, want, "{what} disagrees with include/grass.h");
}

#[test]
fn the_header_has_every_core_code_and_no_other() {
    let h = header();
    fn check<T: Code>(h: &Codes) {
        same(T::C_TYPE, &with_prefix(h, T::PREFIX, T::PREFIX), &of::<T>());
    }
    check::<Dtype>(&h);
    check::<Side>(&h);
    check::<Method>(&h);
    check::<Scaling>(&h);
    check::<DecayMode>(&h);
    check::<RefreshMode>(&h);
    check::<StepOutcome>(&h);
    check::<DeviceKind>(&h);
    check::<ErrorKind>(&h);
    assert_eq!(h.get("GRASS_OK"), Some(&0));
}

#[test]
fn kernel_codes_are_the_headers() {
    let h = header();
    let cases = [
        ("kernels/common.cuh", "DT_", "GRASS_DTYPE_"),
        ("kernels/select.cu", "M_", "GRASS_METHOD_"),
        ("kernels/adamw.cu", "STEP_", "GRASS_STEP_"),
    ];
    for (file, prefix, c_prefix) in cases {
        let got = with_prefix(&defines(&read(file)), prefix, c_prefix);
        same(file, &got, &with_prefix(&h, c_prefix, c_prefix));
    }
}

/// `NAME = <int>` and `A, B, C = 1, 2, 3` assignments at the top level of a Python file.
fn py_ints(text: &str) -> Codes {
    let mut out = Codes::new();
    for l in text.lines() {
        let Some((lhs, rhs)) = l.split_once(" = ") else {
            continue;
        };
        let names: Vec<&str> = lhs.split(',').map(str::trim).collect();
        let values: Vec<Option<i64>> = rhs.split('#').next().unwrap().split(',').map(int).collect();
        let is_name = |n: &&str| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        };
        if l.starts_with(char::is_whitespace)
            || names.len() != values.len()
            || !names.iter().all(is_name)
        {
            continue;
        }
        if values.iter().all(Option::is_some) {
            for (n, v) in names.iter().zip(values) {
                out.insert(n.to_string(), v.unwrap());
            }
        }
    }
    out
}

/// The `{"key": <int>, ...}` (or `{<int>: "NAME", ...}`) dict assigned to `name` in a Python
/// file, as key -> int.
fn py_dict(text: &str, name: &str) -> Codes {
    let start = text
        .find(&format!("\n{name} = {{"))
        .unwrap_or_else(|| panic!("no dict {name}"));
    let body = &text[start + name.len() + 5..];
    let body = &body[..body.find('}').unwrap()];
    body.split(',')
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let (k, v) = e.split_once(':').unwrap();
            let (k, v) = (k.trim(), v.trim());
            match int(k) {
                Some(code) => (v.trim_matches('"').to_string(), code),
                None => (k.trim_matches('"').to_string(), int(v).expect("int value")),
            }
        })
        .collect()
}

fn upper(prefix: &str, d: &Codes) -> Codes {
    d.iter()
        .map(|(k, &v)| (format!("{prefix}{}", k.to_uppercase()), v))
        .collect()
}

/// Every constant a Python binding spells out as `NAME = n` must be `GRASS_NAME` in grass.h.
fn check_py_ints(file: &str, h: &Codes) {
    let ints = py_ints(&read(file));
    assert!(ints.len() >= 7, "{file}: found only {ints:?}");
    for (name, v) in ints {
        let c = format!("GRASS_{name}");
        assert_eq!(
            h.get(&c),
            Some(&v),
            "{file}: {name} = {v}, grass.h has {c} = {:?}",
            h.get(&c)
        );
    }
}

#[test]
fn jax_binding_codes_are_the_headers() {
    let h = header();
    let file = "bindings/jax/grass_jax/_lib.py";
    check_py_ints(file, &h);
    let text = read(file);
    for (dict, prefix) in [
        ("METHODS", "GRASS_METHOD_"),
        ("SCALINGS", "GRASS_SCALING_"),
        ("DECAY_MODES", "GRASS_DECAY_"),
        ("REFRESH_MODES", "GRASS_REFRESH_"),
    ] {
        same(
            &format!("{file} {dict}"),
            &upper(prefix, &py_dict(&text, dict)),
            &with_prefix(&h, prefix, prefix),
        );
    }
    let errors = "bindings/jax/grass_jax/errors.py";
    let names: Codes = py_dict(&read(errors), "STATUS_NAMES");
    let statuses: Codes = h
        .iter()
        .filter(|(k, _)| *k == "GRASS_OK" || k.starts_with("GRASS_ERROR_"))
        .map(|(k, &v)| (k.clone(), v))
        .collect();
    same(errors, &names, &statuses);
}

#[test]
fn torch_binding_codes_are_the_headers() {
    let h = header();
    let file = "bindings/torch/grass_torch.py";
    check_py_ints(file, &h);
    let text = read(file);
    let dtypes: Codes = py_dict(&text, "DTYPE")
        .into_iter()
        .map(|(k, v)| {
            let c = match k.as_str() {
                "float32" => "f32",
                "bfloat16" => "bf16",
                "float16" => "f16",
                other => panic!("{file}: unknown dtype {other}"),
            };
            (c.to_string(), v)
        })
        .collect();
    same(
        &format!("{file} DTYPE"),
        &upper("GRASS_DTYPE_", &dtypes),
        &with_prefix(&h, "GRASS_DTYPE_", "GRASS_DTYPE_"),
    );
    for (dict, prefix) in [
        ("METHODS", "GRASS_METHOD_"),
        ("DECAY", "GRASS_DECAY_"),
        ("REFRESH", "GRASS_REFRESH_"),
    ] {
        same(
            &format!("{file} {dict}"),
            &upper(prefix, &py_dict(&text, dict)),
            &with_prefix(&h, prefix, prefix),
        );
    }
}
