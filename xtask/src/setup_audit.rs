//! The check that setup's lists are complete: reads the sources of the
//! tests, the demo and the bench for the programs they run and the python
//! modules their embedded python imports, and fails naming each one that
//! [`setup::PROGRAMS`], [`setup::PYTHON_MODULES`] or [`setup::PYPI_MODULES`]
//! lacks. Three times a program or module installed by hand on the
//! developers' machine hid a break that only a fresh machine showed.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use crate::setup;

/// Programs that come with the toolchain or the base system every Debian
/// machine has, which setup does not install.
const BASE: &[&str] = &[
    "cargo",
    "rustup",
    "rustc",
    "bpf-linker",
    "apt-get",
    "dpkg-query",
    "sh",
    "bash",
    "env",
    "kill",
    "uname",
];

/// Calls whose first string argument is a program: `Command::new("x")`,
/// the harness's `ns.command("x")`, `ns.exec("x", ..)`, `run("x", ..)`,
/// `output("x", ..)`.
const CALLS: &[&str] = &[
    "Command::new(",
    ".command(",
    ".exec(",
    " run(",
    "::run(",
    " output(",
];

/// An argument list of owned strings that starts with a program, as the
/// harness prefixes `setpriv` to the daemon's command line.
const OWNED_LIST: &str = ".args([";

/// Where the next literal but one is a program: `ip netns exec NAME prog`.
const AFTER_ONE: &str = "\"exec\",";

/// Where the next literal is a program: `sh -c 'exec "$@"' sh prog`.
const NEXT: &str = "exec \\\"$@\\\"\", \"sh\",";

/// The sources to read: everything of tests, xtask and the daemon.
fn sources() -> Vec<PathBuf> {
    let root = crate::root();
    let mut files = Vec::new();
    for dir in ["tests", "xtask", "metadata-userspace"] {
        walk(&root.join(dir), &mut files);
    }
    files
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs" || e == "py")
            && !path.ends_with("setup_audit.rs")
        {
            files.push(path);
        }
    }
}

/// The string literal at the start of `text` (after white space), if any.
fn literal(text: &str) -> Option<&str> {
    let rest = text.trim_start().strip_prefix('"')?;
    rest.split_once('"').map(|(s, _)| s)
}

/// Skips one argument (up to the next comma) and returns what follows.
fn after_argument(text: &str) -> &str {
    text.split_once(',').map_or("", |(_, rest)| rest)
}

/// Programs a source text runs, by the call forms above.
fn programs_run(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut add = |program: Option<&str>| {
        let Some(program) = program else { return };
        let name = program.rsplit('/').next().unwrap_or(program);
        let plain = !name.is_empty()
            && !name.starts_with('-')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c));
        if plain {
            found.insert(name.to_owned());
        }
    };
    for call in CALLS {
        for (at, _) in text.match_indices(call) {
            add(literal(&text[at + call.len()..]));
        }
    }
    for (at, _) in text.match_indices(OWNED_LIST) {
        let rest = &text[at + OWNED_LIST.len()..];
        if let Some(program) = literal(rest)
            && rest.trim_start()[program.len() + 2..].starts_with(".to_owned()")
        {
            add(Some(program));
        }
    }
    for (at, _) in text.match_indices(AFTER_ONE) {
        add(literal(after_argument(&text[at + AFTER_ONE.len()..])));
    }
    for (at, _) in text.match_indices(NEXT) {
        add(literal(&text[at + NEXT.len()..]));
    }
    found
}

/// Top-level python modules imported by `import x` / `from x import y`
/// lines (embedded scripts and .py files) and by `-c "import x"`.
fn python_imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut add = |module: &str| {
        let top: String = module
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !top.is_empty() {
            found.insert(top);
        }
    };
    for line in text.lines() {
        for (at, _) in line.match_indices("\"import ") {
            let rest = &line[at + "\"import ".len()..];
            // One statement: up to its end or the string's.
            let statement = rest.split([';', '"']).next().unwrap_or_default();
            statement.split(',').for_each(|m| add(m.trim()));
        }
        let line = line.trim_start().trim_start_matches('"');
        if let Some(rest) = line.strip_prefix("import ") {
            rest.split(',').for_each(|m| add(m.trim()));
        } else if let Some(rest) = line.strip_prefix("from ")
            && let Some((module, _)) = rest.split_once(" import ")
        {
            add(module.trim());
        }
    }
    found
}

/// The standard library's top-level modules, from Debian's python3 itself.
fn stdlib_modules() -> BTreeSet<String> {
    let out = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys; print('\\n'.join(sys.stdlib_module_names))",
        ])
        .output()
        .expect("running /usr/bin/python3");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn top_level(module: &str) -> &str {
    module.split('.').next().unwrap_or(module)
}

/// Each program or module the sources use that no list names, with the
/// file it was found in.
fn unlisted() -> Vec<String> {
    let programs: BTreeSet<&str> = setup::PROGRAMS
        .iter()
        .map(|p| p.name)
        .chain(BASE.iter().copied())
        .collect();
    let modules: BTreeSet<&str> = setup::PYTHON_MODULES
        .iter()
        .chain(setup::PYPI_MODULES)
        .map(|m| top_level(m.name))
        .collect();
    let stdlib = stdlib_modules();
    let mut missing = Vec::new();
    for file in sources() {
        let text = fs::read_to_string(&file).unwrap();
        let shown = file
            .strip_prefix(crate::root())
            .unwrap_or(&file)
            .display()
            .to_string();
        for program in programs_run(&text) {
            if !programs.contains(program.as_str()) {
                missing.push(format!(
                    "program {program} (run in {shown}) is not in setup::PROGRAMS"
                ));
            }
        }
        for module in python_imports(&text) {
            if !stdlib.contains(&module) && !modules.contains(module.as_str()) {
                missing.push(format!(
                    "python module {module} (imported in {shown}) is not in setup::PYTHON_MODULES or setup::PYPI_MODULES"
                ));
            }
        }
    }
    missing
}

#[test]
fn every_program_and_python_module_the_sources_use_is_in_setups_lists() {
    let missing = unlisted();
    assert!(
        missing.is_empty(),
        "setup would not install these on a fresh machine:\n  {}\nadd each with its Debian (or PyPI) package",
        missing.join("\n  ")
    );
}

#[test]
fn the_scan_finds_what_the_tree_is_known_to_use() {
    // A scan that found nothing would pass vacuously.
    let mut programs = BTreeSet::new();
    let mut modules = BTreeSet::new();
    for file in sources() {
        let text = fs::read_to_string(&file).unwrap();
        programs.extend(programs_run(&text));
        modules.extend(python_imports(&text));
    }
    for program in [
        "haproxy",
        "ovsdb-server",
        "qemu-img",
        "curl",
        "nsenter",
        "setpriv",
        "wrk",
        "ovn-sbctl",
    ] {
        assert!(programs.contains(program), "{program}: {programs:?}");
    }
    for module in [
        "cloudinit",
        "botocore",
        "prometheus_client",
        "ovs",
        "neutron",
        "oslo_config",
    ] {
        assert!(modules.contains(module), "{module}: {modules:?}");
    }
}

#[test]
fn scan_reads_each_call_form() {
    let text = r#"
        Command::new("qemu-img").arg("x");
        ns.command("dnsmasq");
        vm.exec("/usr/bin/python3", &["-c", "import json, sys"]);
        run(&python, &["-c", "import os, importlib.metadata as m; print(m.version('x'))"]);
        crate::run(
            "ovs-appctl", &[]);
        .args(["netns", "exec", self.ns.as_str(), "ovn-sbctl", "--timeout=10"])
        .args(["-c", "LISTEN_PID=$$ exec \"$@\"", "sh", "nsenter"])
        command.args([
            "setpriv".to_owned(),
        let script = "
import json, foo.bar
from cloudinit.sources import x
";
    "#;
    let programs: Vec<_> = programs_run(text).into_iter().collect();
    assert_eq!(
        programs,
        [
            "dnsmasq",
            "nsenter",
            "ovn-sbctl",
            "ovs-appctl",
            "python3",
            "qemu-img",
            "setpriv"
        ]
    );
    let modules: Vec<_> = python_imports(text).into_iter().collect();
    assert_eq!(
        modules,
        ["cloudinit", "foo", "importlib", "json", "os", "sys"]
    );
}
