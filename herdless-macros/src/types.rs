//! Checking argument and return types. The arguments become the cache key and the return value
//! the cached value, and both live in a `static`: neither may borrow from the call, and both
//! need a type that can be named. Without these checks such types pass the signature and fail
//! later with errors inside the generated code (a missing lifetime in the `static`, `impl Trait`
//! "not allowed in paths"); here they are rejected at the part of the type that is wrong, with
//! the type to write instead.

use quote::ToTokens;
use syn::{
    GenericArgument, Lifetime, PathArguments, Type, TypeImplTrait, TypeParamBound, TypePath,
    TypeReference,
};

/// The first part of a type that cannot be part of a cache key or a cached value.
enum Found<'a> {
    /// `&T` or `&'a T` (not `&'static T`).
    Reference(&'a TypeReference),
    /// `Cow<T>` / `Cow<'_, T>`: borrows, with the lifetime elided or not `'static`.
    Cow(&'a TypePath, &'a Type),
    /// `'_` or a named lifetime other than `'static` in a path (`Foo<'_>`) or a bound.
    Lifetime(&'a Lifetime),
    /// `impl Trait`, at any depth.
    ImplTrait(&'a TypeImplTrait),
}

/// Rejects an argument type that borrows or is `impl Trait`, at any depth.
pub(crate) fn check_arg_type(ty: &Type) -> syn::Result<()> {
    let Some(found) = find(ty) else {
        return Ok(());
    };
    const KEY: &str = "the arguments form the cache key, which outlives the call";
    Err(match found {
        Found::Reference(r) => syn::Error::new_spanned(
            r,
            format!(
                "{KEY}: take them by value (write `{}`, not `{}`)",
                owned(&r.elem),
                show(r)
            ),
        ),
        Found::Cow(p, inner) => syn::Error::new_spanned(
            p,
            format!(
                "{KEY}: `{}` borrows; write `{}` (or `Cow<'static, {}>`)",
                show(p),
                owned(inner),
                show(inner)
            ),
        ),
        Found::Lifetime(l) => syn::Error::new_spanned(
            l,
            format!(
                "{KEY}: a type with the lifetime `{}` borrows; use an owned type or `'static`",
                show(l)
            ),
        ),
        Found::ImplTrait(t) => syn::Error::new_spanned(
            t,
            "#[herdless::memoized] cannot memoize a generic function (`impl Trait` argument); \
             name a concrete type",
        ),
    })
}

/// Rejects a return type that borrows or contains `impl Trait`.
pub(crate) fn check_return_type(ty: &Type) -> syn::Result<()> {
    let Some(found) = find(ty) else {
        return Ok(());
    };
    const VALUE: &str = "the returned value is cached, so it outlives the call";
    Err(match found {
        Found::Reference(r) => syn::Error::new_spanned(
            r,
            format!(
                "{VALUE}: return an owned type (write `{}`, not `{}`)",
                owned(&r.elem),
                show(r)
            ),
        ),
        Found::Cow(p, inner) => syn::Error::new_spanned(
            p,
            format!(
                "{VALUE}: `{}` borrows; write `{}` (or `Cow<'static, {}>`)",
                show(p),
                owned(inner),
                show(inner)
            ),
        ),
        Found::Lifetime(l) => syn::Error::new_spanned(
            l,
            format!(
                "{VALUE}: a type with the lifetime `{}` borrows; use an owned type or `'static`",
                show(l)
            ),
        ),
        Found::ImplTrait(t) => syn::Error::new_spanned(
            t,
            "#[herdless::memoized] cannot memoize a function returning `impl Trait`: the cache \
             is a static whose value type must be named; return the concrete type (or an \
             `Arc<dyn Trait + Send + Sync>`)",
        ),
    })
}

fn is_static(l: &Lifetime) -> bool {
    l.ident == "static"
}

/// The first offending part of `ty`, outermost first.
fn find(ty: &Type) -> Option<Found<'_>> {
    match ty {
        Type::Reference(r) => match &r.lifetime {
            Some(l) if is_static(l) => find(&r.elem),
            _ => Some(Found::Reference(r)),
        },
        Type::ImplTrait(t) => Some(Found::ImplTrait(t)),
        Type::Paren(p) => find(&p.elem),
        Type::Group(g) => find(&g.elem),
        Type::Array(a) => find(&a.elem),
        Type::Slice(s) => find(&s.elem),
        Type::Ptr(p) => find(&p.elem),
        Type::Tuple(t) => t.elems.iter().find_map(find),
        Type::Path(p) => find_in_path(p),
        Type::TraitObject(t) => find_in_bounds(t.bounds.iter()),
        // Function pointers' references are higher-ranked (`fn(&str)` is `for<'a> fn(&'a str)`),
        // so they borrow nothing from the call; macros and the rest cannot be seen into.
        _ => None,
    }
}

fn find_in_path(p: &TypePath) -> Option<Found<'_>> {
    if let Some(q) = &p.qself {
        if let Some(f) = find(&q.ty) {
            return Some(f);
        }
    }
    let last = p.path.segments.last()?;
    if last.ident == "Cow" {
        if let PathArguments::AngleBracketed(a) = &last.arguments {
            let lifetime = a.args.iter().find_map(|g| match g {
                GenericArgument::Lifetime(l) => Some(l),
                _ => None,
            });
            let inner = a.args.iter().find_map(|g| match g {
                GenericArgument::Type(t) => Some(t),
                _ => None,
            });
            if let Some(inner) = inner {
                if !lifetime.is_some_and(is_static) {
                    return Some(Found::Cow(p, inner));
                }
            }
        }
    }
    for segment in &p.path.segments {
        // `Fn(&str) -> u32` in a path: higher-ranked as in a function pointer.
        let PathArguments::AngleBracketed(a) = &segment.arguments else {
            continue;
        };
        for arg in &a.args {
            let found = match arg {
                GenericArgument::Lifetime(l) if !is_static(l) => Some(Found::Lifetime(l)),
                GenericArgument::Type(t) => find(t),
                GenericArgument::AssocType(t) => find(&t.ty),
                _ => None,
            };
            if found.is_some() {
                return found;
            }
        }
    }
    None
}

fn find_in_bounds<'a>(mut bounds: impl Iterator<Item = &'a TypeParamBound>) -> Option<Found<'a>> {
    bounds.find_map(|b| match b {
        TypeParamBound::Lifetime(l) if !is_static(l) => Some(Found::Lifetime(l)),
        TypeParamBound::Trait(t) => t.path.segments.last().and_then(|s| match &s.arguments {
            PathArguments::AngleBracketed(a) => a.args.iter().find_map(|g| match g {
                GenericArgument::Type(t) => find(t),
                GenericArgument::AssocType(t) => find(&t.ty),
                _ => None,
            }),
            _ => None,
        }),
        _ => None,
    })
}

/// The owned type to write instead of a borrowed `elem` (`str` → `String`, `[T]` → `Vec<T>`).
fn owned(elem: &Type) -> String {
    match elem {
        Type::Slice(s) => format!("Vec<{}>", show(&s.elem)),
        Type::Path(p) if p.qself.is_none() => {
            let path = show(p);
            let known = [
                ("str", "String"),
                ("Path", "PathBuf"),
                ("OsStr", "OsString"),
                ("CStr", "CString"),
            ];
            let last = p.path.segments.last().map(|s| s.ident.to_string());
            match known.iter().find(|(b, _)| last.as_deref() == Some(*b)) {
                Some((_, o)) if p.path.segments.len() == 1 => (*o).to_string(),
                _ => path,
            }
        }
        Type::TraitObject(_) => format!("Box<{}>", show(elem)),
        other => show(other),
    }
}

/// Tokens as a person would write them (`Vec<u8>`, not `Vec < u8 >`).
fn show(t: &impl ToTokens) -> String {
    let s = t.to_token_stream().to_string();
    let mut out = String::with_capacity(s.len());
    let chars: Vec<char> = s.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c == ' ' {
            let prev = out.chars().last();
            let next = chars.get(i + 1).copied();
            let glue = matches!(prev, Some('<' | '&' | '(' | '[' | ':' | '\''))
                || matches!(next, Some('<' | '>' | ',' | ')' | ']' | ':' | ';'))
                || (prev == Some('>') && next == Some('>'));
            if glue {
                continue;
            }
        }
        out.push(c);
    }
    out
}
