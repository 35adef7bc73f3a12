//! The built component is the world in `wit/`: decoded from its bytes, its
//! imports and exports are compared with the published WIT.

use edge_cache_harness::BUILT_GUEST;
use edge_cache_tests::WorldNames;
use std::collections::BTreeSet;
use std::path::Path;
use wit_parser::{Resolve, Type, TypeDefKind, WorldId, WorldItem};

/// The world embedded in the built component.
fn built_world() -> (Resolve, WorldId) {
    let bytes = std::fs::read(BUILT_GUEST).expect("the guest was built");
    match wit_component::decode(&bytes).expect("the guest is a valid component") {
        wit_component::DecodedWasm::Component(resolve, world) => (resolve, world),
        wit_component::DecodedWasm::WitPackage(..) => {
            panic!("the guest is a WIT package, not a component")
        }
    }
}

/// The `edge-function` world as published in `wit/`.
fn published_world() -> (Resolve, WorldId) {
    let mut resolve = Resolve::default();
    let wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
    let (package, _) = resolve.push_dir(&wit).expect("wit/ parses");
    let world = resolve
        .select_world(&[package], Some("edge-function"))
        .expect("wit/ has the edge-function world");
    (resolve, world)
}

fn names<'a>(
    resolve: &Resolve,
    items: impl Iterator<Item = (&'a wit_parser::WorldKey, &'a WorldItem)>,
) -> BTreeSet<String> {
    items
        .filter(|(_, item)| matches!(item, WorldItem::Interface { .. }))
        .map(|(key, _)| resolve.name_world_key(key))
        .collect()
}

#[test]
fn exports_are_exactly_the_world() {
    let (resolve, world) = built_world();
    let exports = names(&resolve, resolve.worlds[world].exports.iter());
    let expected: BTreeSet<String> = [
        "edge:cache/profiles@0.1.0",
        "edge:cache/rate-limit@0.1.0",
        "wasi:http/incoming-handler@0.2.12",
    ]
    .map(String::from)
    .into();
    assert_eq!(exports, expected);

    let (published, published_world) = published_world();
    assert_eq!(
        names(&published, published.worlds[published_world].exports.iter()),
        expected
    );
}

#[test]
fn imports_are_the_cache_the_origin_telemetry_the_penalty_box_and_wasi_only() {
    let world = WorldNames::of(&std::fs::read(BUILT_GUEST).expect("the guest was built"));
    assert_eq!(
        world.own_imports(),
        BTreeSet::from([
            "edge:cache/cache@0.1.0",
            "edge:cache/origin@0.1.0",
            "edge:cache/penalty-box@0.1.0",
            "edge:cache/telemetry@0.1.0"
        ])
    );
    let imports = world.imports;
    // The guest holds no connection: it cannot open sockets or send HTTP.
    for forbidden in ["wasi:sockets/", "wasi:http/outgoing-handler"] {
        assert!(
            !imports.iter().any(|name| name.starts_with(forbidden)),
            "imports {forbidden}: {imports:?}"
        );
    }
}

/// Every `edge:cache` interface the component carries matches the published
/// one: exports exactly; imports as a subset, because the component only
/// imports the functions it calls (the cache functions it does not use yet
/// are dropped by wit-component), each with the published signature.
#[test]
fn interfaces_match_the_published_wit() {
    let (built, built_world) = built_world();
    let (published, _) = published_world();
    let world = &built.worlds[built_world];
    let mut compared = 0;
    let imports = world.imports.iter().map(|entry| (entry, false));
    let exports = world.exports.iter().map(|entry| (entry, true));
    for ((key, item), exported) in imports.chain(exports) {
        let WorldItem::Interface { id, .. } = item else {
            continue;
        };
        let name = built.name_world_key(key);
        if !name.starts_with("edge:cache/") {
            continue;
        }
        let built_interface = &built.interfaces[*id];
        let published_interface = published
            .interfaces
            .iter()
            .find(|(published_id, _)| published.id_of(*published_id).as_deref() == Some(name.as_str()))
            .map(|(_, interface)| interface)
            .unwrap_or_else(|| panic!("{name} is not in wit/"));
        let signature = |resolve: &Resolve, interface: &wit_parser::Interface| -> BTreeSet<String> {
            let functions = interface.functions.values().map(|function| {
                let params: Vec<String> = function
                    .params
                    .iter()
                    .map(|param| format!("{}: {}", param.name, describe(resolve, &param.ty)))
                    .collect();
                let result = function
                    .result
                    .as_ref()
                    .map(|ty| describe(resolve, ty))
                    .unwrap_or_default();
                format!("func {}({}) -> {result}", function.name, params.join(", "))
            });
            let types = interface
                .types
                .iter()
                .map(|(name, ty)| format!("type {name} = {}", shape(resolve, &resolve.types[*ty].kind)));
            functions.chain(types).collect()
        };
        let (carried, expected) = (
            signature(&built, built_interface),
            signature(&published, published_interface),
        );
        if exported {
            assert_eq!(carried, expected, "the exported {name} differs from wit/");
        } else {
            let unknown: Vec<_> = carried.difference(&expected).collect();
            assert!(
                unknown.is_empty(),
                "the imported {name} has items not in wit/: {unknown:?}"
            );
            assert!(!carried.is_empty(), "{name} is imported but empty");
        }
        compared += 1;
    }
    assert_eq!(
        compared, 6,
        "cache, origin, telemetry, penalty-box, profiles and rate-limit"
    );
}

/// A type as text: named types by name, anonymous ones by shape.
fn describe(resolve: &Resolve, ty: &Type) -> String {
    match ty {
        Type::Id(id) => {
            let def = &resolve.types[*id];
            def.name.clone().unwrap_or_else(|| shape(resolve, &def.kind))
        }
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The structure of a type definition (docs and arena ids left out, since
/// they differ between two `Resolve`s while the contract does not).
fn shape(resolve: &Resolve, kind: &TypeDefKind) -> String {
    let optional = |ty: &Option<Type>| ty.as_ref().map_or("_".to_owned(), |ty| describe(resolve, ty));
    match kind {
        TypeDefKind::Record(record) => {
            let fields: Vec<_> = record
                .fields
                .iter()
                .map(|field| format!("{}: {}", field.name, describe(resolve, &field.ty)))
                .collect();
            format!("record {{ {} }}", fields.join(", "))
        }
        TypeDefKind::Variant(variant) => {
            let cases: Vec<_> = variant
                .cases
                .iter()
                .map(|case| format!("{}({})", case.name, optional(&case.ty)))
                .collect();
            format!("variant {{ {} }}", cases.join(", "))
        }
        TypeDefKind::Enum(enumeration) => {
            let cases: Vec<_> = enumeration.cases.iter().map(|case| case.name.as_str()).collect();
            format!("enum {{ {} }}", cases.join(", "))
        }
        TypeDefKind::Option(ty) => format!("option<{}>", describe(resolve, ty)),
        TypeDefKind::Result(result) => format!("result<{}, {}>", optional(&result.ok), optional(&result.err)),
        TypeDefKind::List(ty) => format!("list<{}>", describe(resolve, ty)),
        TypeDefKind::Tuple(tuple) => {
            let types: Vec<_> = tuple.types.iter().map(|ty| describe(resolve, ty)).collect();
            format!("tuple<{}>", types.join(", "))
        }
        TypeDefKind::Type(ty) => describe(resolve, ty),
        other => panic!("edge:cache interfaces use no {} types", other.as_str()),
    }
}

/// The names listed in the fenced block that follows `marker` in
/// `wit/README.md`, one a line.
fn listed_in_wit_readme(marker: &str) -> BTreeSet<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit/README.md"))
        .expect("wit/README.md is readable");
    let after = readme
        .split_once(marker)
        .unwrap_or_else(|| panic!("wit/README.md has no {marker:?}"))
        .1;
    let block = after
        .split("```")
        .nth(1)
        .unwrap_or_else(|| panic!("no fenced block after {marker:?}"));
    block
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `wit/README.md` lists what the built components import; the lists are
/// the decoded truth, not what the source suggests (a Rust program's
/// standard library decides which WASI it pulls in).
#[test]
fn wit_readme_lists_exactly_what_the_built_components_import() {
    for (marker, component) in [
        ("The built edge function imports exactly:", BUILT_GUEST),
        (
            "The built wasi:keyvalue test app imports exactly:",
            env!("KEYVALUE_GUEST"),
        ),
        (
            "The built one-time-codes example imports exactly:",
            env!("ONE_TIME_CODES_COMPONENT"),
        ),
    ] {
        let imports = WorldNames::of(&std::fs::read(component).expect("the component was built")).imports;
        assert_eq!(
            listed_in_wit_readme(marker),
            imports,
            "wit/README.md ({marker}) against {component}"
        );
    }
}
