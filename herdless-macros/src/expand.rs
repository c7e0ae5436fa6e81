//! Checking the annotated function and generating the memoized function and its companion.

use crate::args::{Args, Beta};
use crate::types::{check_arg_type, check_return_type};
use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, ItemFn, Pat, PathArguments, ReturnType, Signature,
    Type,
};

/// What the function returns.
struct Output {
    /// `V` in `-> Result<V, E>`, else the whole return type (`()` for none).
    value: Type,
    /// `E` in `-> Result<V, E>` (errors are passed through, never cached); `None`: infallible.
    error: Option<Type>,
}

/// Rejects what the macro cannot memoize, with the span of the offending part.
fn check_signature(sig: &Signature) -> syn::Result<()> {
    if let Some(recv) = sig.receiver() {
        return Err(syn::Error::new_spanned(
            recv,
            "#[herdless::memoized] cannot memoize a method (it takes `self`): the cache is a \
             static shared by all callers; memoize a free function of the fields the result \
             depends on",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "#[herdless::memoized] cannot memoize a generic function: its cache is one static \
             with one key and one value type",
        ));
    }
    if let Some(c) = &sig.constness {
        return Err(syn::Error::new(
            c.span,
            "#[herdless::memoized] cannot memoize a `const fn`",
        ));
    }
    if let Some(u) = &sig.unsafety {
        return Err(syn::Error::new(
            u.span,
            "#[herdless::memoized] cannot memoize an `unsafe fn`",
        ));
    }
    if let Some(abi) = &sig.abi {
        return Err(syn::Error::new_spanned(
            abi,
            "#[herdless::memoized] cannot memoize an `extern` fn",
        ));
    }
    if let Some(v) = &sig.variadic {
        return Err(syn::Error::new_spanned(
            v,
            "#[herdless::memoized] cannot memoize a variadic fn",
        ));
    }
    for arg in &sig.inputs {
        if let FnArg::Typed(pt) = arg {
            check_arg_type(&pt.ty)?;
        }
    }
    if let ReturnType::Type(_, ty) = &sig.output {
        check_return_type(ty)?;
    }
    Ok(())
}

/// `Result<V, E>` (by the last path segment) or a plain value type.
fn output(ret: &ReturnType) -> syn::Result<Output> {
    let ty = match ret {
        ReturnType::Default => {
            return Ok(Output {
                value: syn::parse_quote!(()),
                error: None,
            })
        }
        ReturnType::Type(_, ty) => &**ty,
    };
    if let Type::Path(tp) = ty {
        if let Some(last) = tp.path.segments.last() {
            if last.ident == "Result" {
                let types: Vec<&Type> = match &last.arguments {
                    PathArguments::AngleBracketed(a) => a
                        .args
                        .iter()
                        .filter_map(|g| match g {
                            GenericArgument::Type(t) => Some(t),
                            _ => None,
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                return match types.as_slice() {
                    [value, error] => Ok(Output {
                        value: (*value).clone(),
                        error: Some((*error).clone()),
                    }),
                    _ => Err(syn::Error::new_spanned(
                        ty,
                        "#[herdless::memoized] needs the error type spelled out: write \
                         `Result<V, E>` (errors are never cached, so the macro must know `E`)",
                    )),
                };
            }
        }
    }
    Ok(Output {
        value: ty.clone(),
        error: None,
    })
}

/// The user's attributes for the outer function (`#[expect]` becomes `#[allow]` there, since
/// the body the expectation is about moves to the inner function) and the lint attributes that
/// also apply to the moved body.
fn split_attrs(attrs: &[Attribute]) -> (Vec<Attribute>, Vec<Attribute>) {
    let is = |a: &Attribute, names: &[&str]| names.iter().any(|n| a.path().is_ident(n));
    let mut outer = Vec::new();
    let mut lints = Vec::new();
    for attr in attrs {
        if is(attr, &["allow", "warn", "deny", "forbid", "expect"]) {
            lints.push(attr.clone());
        }
        if attr.path().is_ident("expect") {
            let mut allow = attr.clone();
            if let syn::Meta::List(list) = &mut allow.meta {
                list.path = syn::parse_quote!(allow);
            }
            outer.push(allow);
        } else {
            outer.push(attr.clone());
        }
    }
    (outer, lints)
}

/// Generates the memoized function, its companion and the inner function holding the body.
pub(crate) fn expand(args: Args, item: ItemFn) -> syn::Result<TokenStream> {
    check_signature(&item.sig)?;
    let out = output(&item.sig.output)?;
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = item;
    let ident = &sig.ident;
    let plain_name = ident.unraw().to_string();
    let companion = format_ident!("{}_memoized", plain_name, span = ident.span());
    let inner = format_ident!("__herdless_{}_inner", plain_name);
    let is_async = sig.asyncness.is_some();

    // Outer parameters: the user's names where they are plain identifiers, else generated.
    let mut outer_params = Vec::new();
    let mut arg_names = Vec::new();
    let mut arg_types = Vec::new();
    for (i, arg) in sig.inputs.iter().enumerate() {
        let FnArg::Typed(pt) = arg else {
            unreachable!("receivers are rejected")
        };
        let name = match &*pt.pat {
            Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => p.ident.clone(),
            _ => format_ident!("__herdless_arg{}", i),
        };
        let ty = &*pt.ty;
        outer_params.push(quote!(#name: #ty));
        arg_names.push(name);
        arg_types.push(ty.clone());
    }
    let (key_ty, key_expr) = match arg_types.len() {
        0 => (quote!(()), quote!(())),
        1 => (quote!(#(#arg_types)*), quote!(#(#arg_names)*)),
        _ => (quote!((#(#arg_types),*)), quote!((#(#arg_names),*))),
    };

    let value_ty = &out.value;
    let value_ty = quote!(#value_ty);
    let fallible = out.error.is_some();
    let error_ty = match &out.error {
        Some(e) => quote!(#e),
        None => quote!(::core::convert::Infallible),
    };
    let store_ty = match (&args.store, &args.store_type) {
        (None, _) => quote!(::herdless::MemoryStore<#key_ty, #value_ty>),
        (Some(_), Some(t)) => quote!(#t),
        (Some(_), None) => quote!(::herdless::store::RedisStore),
    };
    let facade = if is_async {
        quote!(Memoized)
    } else {
        quote!(BlockingMemoized)
    };
    let memo_ty = quote!(::herdless::#facade<#key_ty, #value_ty, #error_ty, #store_ty>);

    // The outer function: look the key up, map the result back to the user's signature.
    let await_ = is_async.then(|| quote!(.await));
    let ok = if fallible {
        quote!(::core::result::Result::Ok(__herdless_value))
    } else {
        quote!(__herdless_value)
    };
    let herdless_side = herdless_side_panics(&plain_name, &companion);
    let err = if let Some(error) = &out.error {
        // Spanned at `E`, so a missing `Clone` points at the error type.
        let clone = quote_spanned!(error.span()=> ::core::clone::Clone::clone(&*__herdless_e));
        quote! {
            ::core::result::Result::Err(match __herdless_error {
                ::herdless::Error::Compute(__herdless_e) => ::std::sync::Arc::try_unwrap(__herdless_e)
                    .unwrap_or_else(|__herdless_e| #clone),
                #herdless_side
            })
        }
    } else {
        quote! {
            match __herdless_error {
                ::herdless::Error::Compute(_) => ::core::unreachable!(),
                #herdless_side
            }
        }
    };
    let (outer_attrs, lint_attrs) = split_attrs(&attrs);
    let cfg_attrs: Vec<&Attribute> = attrs.iter().filter(|a| a.path().is_ident("cfg")).collect();
    let asyncness = &sig.asyncness;
    let output = &sig.output;
    let outer_fn = quote! {
        #(#outer_attrs)*
        #vis #asyncness fn #ident(#(#outer_params),*) #output {
            match #companion().get(&#key_expr) #await_ {
                ::core::result::Result::Ok(__herdless_value) => #ok,
                ::core::result::Result::Err(__herdless_error) => #err,
            }
        }
    };

    // The inner function: the original body under a private name.
    let mut inner_sig = sig.clone();
    inner_sig.ident = inner.clone();
    let inner_fn = quote! {
        #(#lint_attrs)*
        #inner_sig #block
    };

    // The compute closure: destructure the key, call the inner function.
    let fields: Vec<Ident> = (0..arg_types.len())
        .map(|i| format_ident!("__herdless_k{}", i))
        .collect();
    let compute = match (is_async, arg_types.len()) {
        (true, 0) => quote!(|_: ()| #inner()),
        (true, 1) => quote!(#inner),
        (true, _) => quote!(|(#(#fields),*): #key_ty| #inner(#(#fields),*)),
        (false, 0) => quote!(|_: &()| #inner()),
        (false, 1) => {
            quote!(|__herdless_k: &#key_ty| #inner(::core::clone::Clone::clone(__herdless_k)))
        }
        (false, n) => {
            let idx = (0..n).map(syn::Index::from);
            quote!(|__herdless_k: &#key_ty| #inner(#(::core::clone::Clone::clone(&__herdless_k.#idx)),*))
        }
    };
    let build = match (is_async, fallible) {
        (true, true) => quote!(build),
        (true, false) => quote!(build_infallible),
        (false, true) => quote!(build_blocking),
        (false, false) => quote!(build_blocking_infallible),
    };

    // Configuration.
    let name = match &args.name {
        Some(lit) => quote!(#lit),
        None => quote!(::core::concat!(::core::module_path!(), "::", #plain_name)),
    };
    let store = match (&args.store, &args.capacity) {
        (Some(expr), _) => quote!(<#store_ty as ::core::clone::Clone>::clone(&(#expr))),
        (None, capacity) => {
            let capacity = capacity
                .as_ref()
                .map_or_else(|| quote!(10_000), |c| quote!(#c));
            quote! {
                ::herdless::MemoryStore::<#key_ty, #value_ty>::new(#capacity).unwrap_or_else(
                    |__herdless_e| ::core::panic!("#[herdless::memoized] fn `{}`: {}", #plain_name, __herdless_e),
                )
            }
        }
    };
    let ttl = &args.ttl;
    let beta = match &args.beta {
        None => quote!(),
        Some(Beta::Fixed(b)) => quote!(.beta(#b)),
        Some(Beta::Auto(None)) => {
            quote!(.beta_auto(<::herdless::LeadTarget as ::core::default::Default>::default()))
        }
        Some(Beta::Auto(Some(t))) => quote!(.beta_auto(#t)),
    };
    let contention = args.contention.as_ref().map(|c| quote!(.contention(#c)));
    let stale_if_error = args
        .stale_if_error
        .as_ref()
        .map(|g| quote!(.stale_if_error(#g)));
    // Coerced to the exact fn-pointer type, spanned at the path: a wrong signature is reported
    // there, naming the expected `fn(&K, &V) -> Duration`.
    let ttl_with = args.ttl_with.as_ref().map(|f| {
        quote_spanned! {f.span()=>
            .ttl_with({
                let __herdless_ttl_with: fn(&#key_ty, &#value_ty) -> ::std::time::Duration = #f;
                __herdless_ttl_with
            })
        }
    });

    // Bound checks with the span of the offending type, so errors point at the signature.
    let requires = |ty: &Type, bounds: TokenStream, what: &str| {
        let f = format_ident!("__herdless_{}_must_be", what);
        quote_spanned! {ty.span()=> {
            fn #f<T: #bounds>() {}
            #f::<#ty>();
        }}
    };
    let key_bounds = quote!(
        ::core::hash::Hash
            + ::core::cmp::Eq
            + ::core::clone::Clone
            + ::core::marker::Send
            + ::core::marker::Sync
            + 'static
    );
    let val_bounds =
        quote!(::core::clone::Clone + ::core::marker::Send + ::core::marker::Sync + 'static);
    let mut checks: Vec<TokenStream> = arg_types
        .iter()
        .map(|t| requires(t, key_bounds.clone(), "key"))
        .collect();
    checks.push(requires(&out.value, val_bounds.clone(), "value"));
    if let Some(error) = &out.error {
        checks.push(requires(error, val_bounds, "error"));
    }

    let doc = format!(
        "The herdless memoized function behind [`{plain_name}`] (generated by \
         `#[herdless::memoized]`): its counters (`.stats()`), name, and direct calls that \
         return `herdless::Error` instead of panicking on herdless-side errors. Built on first \
         use."
    );
    let companion_fn = quote! {
        #(#cfg_attrs)*
        #[doc = #doc]
        #vis fn #companion() -> &'static #memo_ty {
            #inner_fn
            static __HERDLESS_CELL: ::std::sync::OnceLock<#memo_ty> = ::std::sync::OnceLock::new();
            __HERDLESS_CELL.get_or_init(|| {
                #(#checks)*
                let __herdless_store: #store_ty = #store;
                ::herdless::memoize_stampede::<#key_ty, #value_ty, #store_ty>(&__herdless_store, #ttl)
                    .name(#name)
                    #beta
                    #contention
                    #stale_if_error
                    #ttl_with
                    .#build(#compute)
                    .unwrap_or_else(|__herdless_e| {
                        ::core::panic!("#[herdless::memoized] fn `{}`: {}", #plain_name, __herdless_e)
                    })
            })
        }
    };
    Ok(quote!(#companion_fn #outer_fn))
}

/// Match arms for the errors herdless itself can return: the generated function keeps the
/// user's signature, so it cannot return them and panics with an explanation instead.
fn herdless_side_panics(fn_name: &str, companion: &Ident) -> TokenStream {
    let why = |what: &str| {
        format!(
            "#[herdless::memoized] fn `{fn_name}`: {what}; this function keeps its own signature \
             and cannot return herdless's errors (call `{companion}().get(..)` to handle them)"
        )
    };
    let busy = why("another caller is computing this key and the contention policy fails fast (herdless::Error::Busy)");
    let timeout =
        why("gave up waiting {:?} for another caller's computation (herdless::Error::WaitTimeout)");
    let panicked = why("the computation panicked in another caller (herdless::Error::Panicked)");
    let other = why("herdless returned an error");
    quote! {
        ::herdless::Error::Busy => ::core::panic!(#busy),
        ::herdless::Error::WaitTimeout(__herdless_d) => ::core::panic!(#timeout, __herdless_d),
        ::herdless::Error::Panicked => ::core::panic!(#panicked),
        #[allow(unreachable_patterns)]
        _ => ::core::panic!(#other),
    }
}
