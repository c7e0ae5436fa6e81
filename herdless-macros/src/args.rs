//! Parsing and checking the attribute's arguments: `ttl_secs = 60, beta = auto, name = "…"`.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, ExprUnary, Ident, Lit, LitFloat, LitStr, Token, Type, UnOp};

/// The keys the attribute understands, for error messages.
const KEYS: &str =
    "`ttl`, `ttl_secs`, `ttl_ms`, `beta`, `name`, `capacity`, `store`, `store_type`, \
     `contention`, `stale_if_error`, `stale_if_error_secs`, `ttl_with`";

/// How β is chosen.
pub(crate) enum Beta {
    /// `beta = <f64 expression>`.
    Fixed(TokenStream),
    /// `beta = auto` (no target: `LeadTarget::default()`) or `beta = auto(<target>)`.
    Auto(Option<Expr>),
}

/// The checked arguments of one `#[memoized(...)]`.
pub(crate) struct Args {
    /// An expression of type `std::time::Duration`.
    pub ttl: TokenStream,
    pub beta: Option<Beta>,
    pub name: Option<LitStr>,
    pub capacity: Option<Expr>,
    pub store: Option<Expr>,
    pub store_type: Option<Type>,
    pub contention: Option<Expr>,
    /// `Builder::stale_if_error`: an expression of type `std::time::Duration`.
    pub stale_if_error: Option<TokenStream>,
    /// `Builder::ttl_with`: a path to a `fn(&K, &V) -> Duration`.
    pub ttl_with: Option<Expr>,
}

/// What was written, before the cross-argument checks.
#[derive(Default)]
struct Raw {
    ttl: Option<(Ident, TokenStream)>,
    beta: Option<Beta>,
    name: Option<LitStr>,
    capacity: Option<Expr>,
    store: Option<(Ident, Expr)>,
    store_type: Option<(Ident, Type)>,
    contention: Option<Expr>,
    stale_if_error: Option<(Ident, TokenStream)>,
    ttl_with: Option<Expr>,
}

impl Parse for Args {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut raw = Raw::default();
        let mut seen: Vec<String> = Vec::new();
        while !input.is_empty() {
            let key: Ident = input.parse().map_err(|e| {
                syn::Error::new(
                    e.span(),
                    format!("expected `key = value`; the keys are {KEYS}"),
                )
            })?;
            let name = key.to_string();
            if seen.contains(&name) {
                return Err(syn::Error::new(
                    key.span(),
                    format!("`{name}` is given twice"),
                ));
            }
            if !input.peek(Token![=]) {
                return Err(syn::Error::new(
                    key.span(),
                    format!("expected `{name} = <value>`"),
                ));
            }
            input.parse::<Token![=]>()?;
            match name.as_str() {
                "ttl" | "ttl_secs" | "ttl_ms" => {
                    if let Some((first, _)) = &raw.ttl {
                        return Err(syn::Error::new(
                            key.span(),
                            format!("the TTL is already given by `{first}`; give only one of `ttl`, `ttl_secs`, `ttl_ms`"),
                        ));
                    }
                    let value: Expr = input.parse()?;
                    let ttl = ttl(&name, &value)?;
                    raw.ttl = Some((key, ttl));
                }
                "beta" => raw.beta = Some(beta(input.parse()?)?),
                "name" => {
                    let lit: LitStr = input.parse().map_err(|e| {
                        syn::Error::new(
                            e.span(),
                            "`name` takes a string literal: `name = \"users::by_id\"`",
                        )
                    })?;
                    if lit.value().is_empty() {
                        return Err(syn::Error::new_spanned(&lit, "`name` must not be empty"));
                    }
                    raw.name = Some(lit);
                }
                "capacity" => {
                    let value: Expr = input.parse()?;
                    match int_literal(&value)? {
                        Some(0) => {
                            return Err(syn::Error::new_spanned(
                                &value,
                                "`capacity` must be at least 1",
                            ))
                        }
                        _ => raw.capacity = Some(value),
                    }
                }
                "store" => raw.store = Some((key, input.parse()?)),
                "store_type" => raw.store_type = Some((key, input.parse()?)),
                "contention" => raw.contention = Some(input.parse()?),
                "stale_if_error" | "stale_if_error_secs" => {
                    if let Some((first, _)) = &raw.stale_if_error {
                        return Err(syn::Error::new(
                            key.span(),
                            format!("the grace is already given by `{first}`; give only one of `stale_if_error`, `stale_if_error_secs`"),
                        ));
                    }
                    let value: Expr = input.parse()?;
                    let grace = stale_if_error(&name, &value)?;
                    raw.stale_if_error = Some((key, grace));
                }
                "ttl_with" => {
                    let value: Expr = input.parse()?;
                    if !matches!(value, Expr::Path(_) | Expr::Closure(_)) {
                        return Err(syn::Error::new_spanned(
                            &value,
                            "`ttl_with` takes a path to a `fn(&K, &V) -> std::time::Duration` \
                             (K: the argument, or the tuple of the arguments; V: the value, the \
                             `Ok` type for a `Result`): `ttl_with = ttl_of`",
                        ));
                    }
                    raw.ttl_with = Some(value);
                }
                _ => {
                    return Err(syn::Error::new(
                        key.span(),
                        format!("unknown argument `{name}`; the arguments are {KEYS}"),
                    ))
                }
            }
            seen.push(name);
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        raw.check()
    }
}

impl Raw {
    fn check(self) -> syn::Result<Args> {
        let Some((_, ttl)) = self.ttl else {
            return Err(syn::Error::new(
                Span::call_site(),
                "missing TTL: add `ttl_secs = <seconds>`, `ttl_ms = <milliseconds>` or `ttl = <std::time::Duration>`",
            ));
        };
        if let (Some(capacity), Some(_)) = (&self.capacity, &self.store) {
            return Err(syn::Error::new_spanned(
                capacity,
                "`capacity` sizes the default in-memory store; it cannot be combined with `store`",
            ));
        }
        if let (Some((key, _)), None) = (&self.store_type, &self.store) {
            return Err(syn::Error::new(
                key.span(),
                "`store_type` names the type of `store = <expr>`; give `store` too",
            ));
        }
        Ok(Args {
            ttl,
            beta: self.beta,
            name: self.name,
            capacity: self.capacity,
            store: self.store.map(|(_, e)| e),
            store_type: self.store_type.map(|(_, t)| t),
            contention: self.contention,
            stale_if_error: self.stale_if_error.map(|(_, g)| g),
            ttl_with: self.ttl_with,
        })
    }
}

/// The value of an integer literal (`None` for any other expression); a literal that is not an
/// integer is an error.
fn int_literal(value: &Expr) -> syn::Result<Option<u128>> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => Ok(Some(i.base10_parse()?)),
        Expr::Lit(other) => Err(syn::Error::new_spanned(other, "expected an integer")),
        _ => Ok(None),
    }
}

/// `ttl = <Duration>`, `ttl_secs = <u64>`, `ttl_ms = <u64>` as a `Duration` expression.
fn ttl(key: &str, value: &Expr) -> syn::Result<TokenStream> {
    if key == "ttl" {
        if let Expr::Lit(lit) = value {
            return Err(syn::Error::new_spanned(
                lit,
                "`ttl` takes a `std::time::Duration` expression; for a number write `ttl_secs = 60` or `ttl_ms = 500`",
            ));
        }
        return Ok(quote!(#value));
    }
    if int_literal(value)? == Some(0) {
        return Err(syn::Error::new_spanned(value, "the TTL must be positive"));
    }
    let span = value.span();
    Ok(if key == "ttl_secs" {
        quote_spanned!(span=> ::std::time::Duration::from_secs(#value))
    } else {
        quote_spanned!(span=> ::std::time::Duration::from_millis(#value))
    })
}

/// `stale_if_error = <Duration>`, `stale_if_error_secs = <u64>` as a `Duration` expression
/// (zero: disabled, as on the builder).
fn stale_if_error(key: &str, value: &Expr) -> syn::Result<TokenStream> {
    if key == "stale_if_error" {
        if let Expr::Lit(lit) = value {
            return Err(syn::Error::new_spanned(
                lit,
                "`stale_if_error` takes a `std::time::Duration` expression; for a number of seconds write `stale_if_error_secs = 60`",
            ));
        }
        return Ok(quote!(#value));
    }
    int_literal(value)?;
    let span = value.span();
    Ok(quote_spanned!(span=> ::std::time::Duration::from_secs(#value)))
}

/// `beta = 0.5`, `beta = 2`, `beta = SOME_CONST`, `beta = auto`, `beta = auto(<LeadTarget>)`.
fn beta(value: Expr) -> syn::Result<Beta> {
    const WANT: &str =
        "`beta` takes a number (f64 ≥ 0), `auto`, or `auto(<target>)` (a `herdless::LeadTarget` or a `Duration`)";
    match &value {
        Expr::Path(p) if p.path.is_ident("auto") => Ok(Beta::Auto(None)),
        Expr::Call(call) if matches!(&*call.func, Expr::Path(p) if p.path.is_ident("auto")) => {
            if call.args.len() != 1 {
                return Err(syn::Error::new_spanned(call, WANT));
            }
            Ok(Beta::Auto(Some(call.args[0].clone())))
        }
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => {
            let float = LitFloat::new(&format!("{}.0", i.base10_digits()), i.span());
            Ok(Beta::Fixed(quote!(#float)))
        }
        Expr::Lit(ExprLit {
            lit: Lit::Float(f), ..
        }) => {
            if !f.suffix().is_empty() && f.suffix() != "f64" {
                return Err(syn::Error::new_spanned(f, "`beta` is an f64"));
            }
            Ok(Beta::Fixed(quote!(#f)))
        }
        Expr::Lit(other) => Err(syn::Error::new_spanned(other, WANT)),
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_),
            expr,
            ..
        }) if matches!(**expr, Expr::Lit(_)) => Err(syn::Error::new_spanned(
            &value,
            "`beta` must be ≥ 0 (0 disables early refresh)",
        )),
        _ => Ok(Beta::Fixed(quote!(#value))),
    }
}
