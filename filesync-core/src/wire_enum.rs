//! One enum, two representations.
//!
//! JSON peers (and the original FileSync) expect internally tagged objects:
//! `{"type":"OFFER","port":9000}`. postcard cannot decode internally tagged enums, because
//! that needs `deserialize_any`, which a non-self-describing format cannot offer. So each
//! message enum is serialised through one of two private twins, picked by
//! `Serializer::is_human_readable()`: an internally tagged twin for JSON and an externally
//! tagged twin (variant index, then fields) for postcard. Both twins borrow the payload
//! when serialising, so nothing is copied.
//!
//! postcard identifies variants by *position*: variants are only ever appended, never
//! reordered or removed (`spec/PROTOCOL.md`, "Versioning").

macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $variant:ident($ty:ty) = $tag:literal $(| $alias:literal)*
            ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub enum $name {
            $( $(#[doc = $doc])* $variant($ty) ),+
        }

        impl $name {
            /// The message's wire name (the JSON `type` tag).
            pub fn kind(&self) -> &'static str {
                match self { $( $name::$variant(_) => $tag ),+ }
            }

            /// The message's postcard variant index: its position in the declaration.
            pub fn index(&self) -> u32 {
                #[allow(non_camel_case_types, clippy::enum_variant_names)]
                enum Position { $( $variant ),+ }
                match self { $( $name::$variant(_) => Position::$variant as u32 ),+ }
            }
        }

        const _: () = {
            use serde::{Deserialize, Serialize};

            #[derive(Serialize)]
            #[serde(tag = "type")]
            enum TaggedRef<'a> { $( #[serde(rename = $tag)] $variant(&'a $ty) ),+ }

            #[derive(Deserialize)]
            #[serde(tag = "type")]
            enum TaggedOwned { $( #[serde(rename = $tag $(, alias = $alias)*)] $variant($ty) ),+ }

            #[derive(Serialize)]
            enum CompactRef<'a> { $( $variant(&'a $ty) ),+ }

            #[derive(Deserialize)]
            enum CompactOwned { $( $variant($ty) ),+ }

            impl Serialize for $name {
                fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    if s.is_human_readable() {
                        match self { $( $name::$variant(v) => TaggedRef::$variant(v).serialize(s) ),+ }
                    } else {
                        match self { $( $name::$variant(v) => CompactRef::$variant(v).serialize(s) ),+ }
                    }
                }
            }

            impl<'de> Deserialize<'de> for $name {
                fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                    if d.is_human_readable() {
                        Ok(match TaggedOwned::deserialize(d)? { $( TaggedOwned::$variant(v) => $name::$variant(v) ),+ })
                    } else {
                        Ok(match CompactOwned::deserialize(d)? { $( CompactOwned::$variant(v) => $name::$variant(v) ),+ })
                    }
                }
            }
        };
    };
}

pub(crate) use wire_enum;
