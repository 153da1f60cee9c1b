//! The spec schema as data: every section's fields with their type, range, default and doc.
//!
//! Section structs are declared once with [`spec_section!`], which generates the serde struct,
//! its `Default`, and a [`SectionSchema`] describing each field. Validation, the README's spec
//! reference and `beatlab spec --reference` all read the same descriptors, so the documentation
//! cannot drift from the code.

use std::fmt;

/// The type (and allowed range) of a spec field.
#[derive(Clone, Debug)]
pub enum Ty {
    Bool,
    /// An integer in `min..=max`.
    Int {
        min: i64,
        max: i64,
    },
    /// A finite number in `min..=max`; integers are accepted and widened.
    Float {
        min: f64,
        max: f64,
    },
    Str,
    /// One of a fixed set of strings.
    Choice(&'static [&'static str]),
    List(Box<Ty>),
    /// A table with arbitrary keys whose values all have this type.
    Map(Box<Ty>),
    Section(fn() -> SectionSchema),
    /// Any scalar (string, number, boolean); used where the type depends on another field.
    Scalar,
}

impl Ty {
    /// A short human description used in error messages and the reference ("an integer in 1..=4096").
    pub fn describe(&self) -> String {
        match self {
            Ty::Bool => "a boolean (true or false)".into(),
            Ty::Int { min, max } => match (*min, *max) {
                (i64::MIN, i64::MAX) => "an integer".into(),
                (min, i64::MAX) => format!("an integer >= {min}"),
                (min, max) => format!("an integer in {min}..={max}"),
            },
            Ty::Float { min, max } => match (min.is_finite(), max.is_finite()) {
                (false, false) => "a number".into(),
                (true, false) => format!("a number >= {}", fmt_num(*min)),
                (false, true) => format!("a number <= {}", fmt_num(*max)),
                (true, true) => format!("a number in {}..={}", fmt_num(*min), fmt_num(*max)),
            },
            Ty::Str => "a string".into(),
            Ty::Choice(values) => format!("one of {}", quote_list(values)),
            Ty::List(inner) => format!("a list of {}", inner.describe_plural()),
            Ty::Map(inner) => format!("a table of {}", inner.describe_plural()),
            Ty::Section(_) => "a table".into(),
            Ty::Scalar => "a string, number or boolean".into(),
        }
    }

    /// The plural form for containers: "integers in 1..=8", "values from `a`, `b`".
    fn describe_plural(&self) -> String {
        match self {
            Ty::Choice(values) => format!("values from {}", quote_list(values)),
            Ty::Section(_) => "tables".into(),
            Ty::Scalar => "strings, numbers or booleans".into(),
            Ty::List(_) | Ty::Map(_) => format!("({})", self.describe()),
            other => {
                let single = other.describe();
                let rest = single
                    .strip_prefix("an ")
                    .or_else(|| single.strip_prefix("a "))
                    .unwrap_or(&single);
                match rest.split_once(' ') {
                    Some((noun, tail)) if !tail.starts_with('(') => format!("{noun}s {tail}"),
                    _ => format!("{}s", rest.split(' ').next().unwrap_or(rest)),
                }
            }
        }
    }

    /// The compact type name used in the reference table.
    pub fn short(&self) -> String {
        match self {
            Ty::Bool => "bool".into(),
            Ty::Int { min, max } => match (*min, *max) {
                (i64::MIN, i64::MAX) => "int".into(),
                (min, i64::MAX) => format!("int >= {min}"),
                (min, max) => format!("int {min}..={max}"),
            },
            Ty::Float { min, max } => match (min.is_finite(), max.is_finite()) {
                (false, false) => "float".into(),
                (true, false) => format!("float >= {}", fmt_num(*min)),
                (false, true) => format!("float <= {}", fmt_num(*max)),
                (true, true) => format!("float {}..={}", fmt_num(*min), fmt_num(*max)),
            },
            Ty::Str => "string".into(),
            Ty::Choice(values) => values.join(" \\| "),
            Ty::List(inner) => format!("[{}]", inner.short()),
            Ty::Map(inner) => format!("{{key = {}}}", inner.short()),
            Ty::Section(_) => "table".into(),
            Ty::Scalar => "scalar".into(),
        }
    }
}

pub(crate) fn quote_list(values: &[&str]) -> String {
    values
        .iter()
        .map(|v| format!("`{v}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Formats a number the way a person writes it in TOML (`0.0001`, `1e-8`, `40`).
pub fn fmt_num(x: f64) -> String {
    if x == x.trunc() && x.abs() < 1e15 {
        format!("{x:.1}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        let plain = format!("{x}");
        if plain.len() >= 10 {
            format!("{x:e}")
        } else {
            plain
        }
    }
}

/// One field of a section.
#[derive(Clone, Debug)]
pub struct FieldSchema {
    pub name: &'static str,
    pub doc: String,
    pub ty: Ty,
    /// The built-in default, as a TOML value.
    pub default: toml::Value,
    /// A field that must be given (its default is only a placeholder).
    pub required: bool,
}

/// All fields of a section, in declaration order.
#[derive(Clone, Debug)]
pub struct SectionSchema {
    pub name: &'static str,
    pub doc: String,
    pub fields: Vec<FieldSchema>,
}

impl SectionSchema {
    pub fn field(&self, name: &str) -> Option<&FieldSchema> {
        self.fields.iter().find(|f| f.name == name)
    }

    pub fn field_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.fields.iter().map(|f| f.name)
    }
}

/// Maps a Rust field type to its schema type.
pub trait SchemaType {
    fn ty() -> Ty;
}

macro_rules! int_schema {
    ($($t:ty),*) => {$(
        impl SchemaType for $t {
            fn ty() -> Ty {
                Ty::Int { min: <$t>::MIN as i64, max: (<$t>::MAX as i128).min(i64::MAX as i128) as i64 }
            }
        }
    )*};
}
int_schema!(u8, u16, u32, u64, i32, i64, usize);

impl SchemaType for f64 {
    fn ty() -> Ty {
        Ty::Float {
            min: f64::NEG_INFINITY,
            max: f64::INFINITY,
        }
    }
}
impl SchemaType for bool {
    fn ty() -> Ty {
        Ty::Bool
    }
}
impl SchemaType for String {
    fn ty() -> Ty {
        Ty::Str
    }
}
impl SchemaType for beatlab_heartcare::instruct::Task {
    fn ty() -> Ty {
        Ty::Choice(&beatlab_heartcare::instruct::Task::NAMES)
    }
}
impl<T: SchemaType> SchemaType for Vec<T> {
    fn ty() -> Ty {
        Ty::List(Box::new(T::ty()))
    }
}
impl<T: SchemaType> SchemaType for std::collections::BTreeMap<String, T> {
    fn ty() -> Ty {
        Ty::Map(Box::new(T::ty()))
    }
}
impl SchemaType for toml::Value {
    fn ty() -> Ty {
        Ty::Scalar
    }
}

/// Extra constraints attached to a field declaration with `=> ...`.
pub mod checks {
    use super::Ty;

    /// A constraint that narrows a field's type.
    #[derive(Clone, Copy, Debug)]
    pub enum Check {
        Range(f64, f64),
        Required,
    }

    /// Inclusive numeric range.
    pub fn range(min: impl Into<f64>, max: impl Into<f64>) -> Check {
        Check::Range(min.into(), max.into())
    }

    /// At least `min`.
    pub fn at_least(min: impl Into<f64>) -> Check {
        Check::Range(min.into(), f64::INFINITY)
    }

    /// The field must be given.
    pub fn required() -> Check {
        Check::Required
    }

    pub(crate) fn apply(ty: Ty, check: Check) -> Ty {
        match (ty, check) {
            (Ty::Int { min, max }, Check::Range(lo, hi)) => Ty::Int {
                min: min.max(lo as i64),
                max: if hi.is_finite() {
                    max.min(hi as i64)
                } else {
                    max
                },
            },
            (Ty::Float { .. }, Check::Range(lo, hi)) => Ty::Float { min: lo, max: hi },
            (Ty::List(inner), c @ Check::Range(..)) => Ty::List(Box::new(apply(*inner, c))),
            (Ty::Map(inner), c @ Check::Range(..)) => Ty::Map(Box::new(apply(*inner, c))),
            (ty, _) => ty,
        }
    }
}

/// Declares a spec section: the struct, its defaults, and its schema.
macro_rules! spec_section {
    (
        $(#[doc = $sdoc:literal])*
        pub struct $name:ident in $section:literal {
            $(
                $(#[doc = $doc:literal])*
                $field:ident : $fty:ty = $default:expr $(=> $check:expr)?
            ),* $(,)?
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            $( $(#[doc = $doc])* pub $field: $fty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        impl $crate::spec::schema::SchemaType for $name {
            fn ty() -> $crate::spec::schema::Ty {
                $crate::spec::schema::Ty::Section(<$name>::schema)
            }
        }

        impl $name {
            /// The field descriptors of this section.
            pub fn schema() -> $crate::spec::schema::SectionSchema {
                #[allow(unused_imports)]
                use $crate::spec::schema::checks::*;
                $crate::spec::schema::SectionSchema {
                    name: $section,
                    doc: $crate::spec::schema::join_doc(&[$($sdoc),*]),
                    fields: vec![$({
                        let default: $fty = $default;
                        #[allow(unused_mut)]
                        let mut ty = <$fty as $crate::spec::schema::SchemaType>::ty();
                        #[allow(unused_mut)]
                        let mut required = false;
                        $(
                            let check: Check = $check;
                            if matches!(check, Check::Required) { required = true; }
                            ty = $crate::spec::schema::checks::apply(ty, check);
                        )?
                        $crate::spec::schema::FieldSchema {
                            name: stringify!($field),
                            doc: $crate::spec::schema::join_doc(&[$($doc),*]),
                            ty,
                            default: toml::Value::try_from(&default)
                                .expect("spec defaults serialise to TOML"),
                            required,
                        }
                    }),*],
                }
            }
        }
    };
}
pub(crate) use spec_section;

/// Declares a string-valued choice: a serde enum with its allowed spellings.
macro_rules! spec_choice {
    (
        $(#[doc = $edoc:literal])*
        pub enum $name:ident { $( $(#[doc = $vdoc:literal])* $variant:ident = $text:literal ),* $(,)? }
    ) => {
        $(#[doc = $edoc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $( $(#[doc = $vdoc])* #[serde(rename = $text)] $variant, )*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];
            /// Every value's spelling in specs, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text),*];

            pub fn as_str(self) -> &'static str {
                match self { $( $name::$variant => $text, )* }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::spec::schema::UnknownChoice;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| $crate::spec::schema::UnknownChoice {
                        found: s.to_string(),
                        expected: Self::NAMES,
                    })
            }
        }

        impl $crate::spec::schema::SchemaType for $name {
            fn ty() -> $crate::spec::schema::Ty {
                $crate::spec::schema::Ty::Choice(Self::NAMES)
            }
        }
    };
}
pub(crate) use spec_choice;

/// A string that names none of a choice's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown value `{found}`: expected {}", quote_list(expected))]
pub struct UnknownChoice {
    /// The string given.
    pub found: String,
    /// The values' spellings.
    pub expected: &'static [&'static str],
}

/// Joins doc-comment lines into one paragraph (the leading space rustdoc keeps is dropped).
pub fn join_doc(lines: &[&str]) -> String {
    lines.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ")
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_types_for_people() {
        let check = |ty: Ty, expected: &str| assert_eq!(ty.describe(), expected);
        check(Ty::Int { min: 1, max: 4096 }, "an integer in 1..=4096");
        check(Ty::Float { min: 0.0, max: 1.0 }, "a number in 0..=1");
        check(
            Ty::List(Box::new(Ty::Int { min: 1, max: 8 })),
            "a list of integers in 1..=8",
        );
        check(Ty::List(Box::new(Ty::Str)), "a list of strings");
        check(Ty::Choice(&["a", "b"]), "one of `a`, `b`");
        assert_eq!(fmt_num(0.0001), "0.0001");
        assert_eq!(fmt_num(40.0), "40");
        assert_eq!(fmt_num(1e-8), "1e-8");
    }
}
