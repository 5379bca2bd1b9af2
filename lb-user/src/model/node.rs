//! Typing a document straight from the [`Node`]s [`super::block_yaml`] reads, with
//! no `serde_json::Value` made in between: each step answers as `&Value`'s
//! deserializer answers for the value the node is (the same visits, the same
//! refusals), so a type decoded from a node is the one decoded from its value. A
//! mapping's entries come in the order written, not sorted: types pick fields by
//! name. Any error here is not reported: the caller decodes the document's value
//! again for the API server's words and the field's path.

use serde::de::{
    self, DeserializeSeed, Deserializer, IntoDeserializer as _, MapAccess, SeqAccess, Unexpected,
    Visitor,
};
use serde_json::{Error, Value};

use super::block_yaml::Node;

impl Node<'_> {
    /// What the node is, for an error.
    fn unexpected(&self) -> Unexpected<'_> {
        match self {
            Node::Str(s) => Unexpected::Str(s),
            Node::Scalar(v) => match v {
                Value::Null => Unexpected::Unit,
                Value::Bool(b) => Unexpected::Bool(*b),
                _ => Unexpected::Other("number"),
            },
            Node::Map(_) => Unexpected::Map,
            Node::Seq(_) => Unexpected::Seq,
        }
    }

    fn invalid_type<E: de::Error>(&self, exp: &dyn de::Expected) -> E {
        E::invalid_type(self.unexpected(), exp)
    }
}

/// `&Value`'s answer for a node that is not a scalar `Value`: a string, a mapping
/// or a sequence (`$scalar`: what a null, boolean or number answers).
macro_rules! or_scalar {
    ($self:ident, $visitor:ident, $scalar:ident, { $($arm:tt)* }) => {
        match $self {
            Node::Scalar(v) => v.$scalar($visitor),
            $($arm)*
            other => Err(other.invalid_type(&$visitor)),
        }
    };
}

/// Methods only a null, a boolean or a number answers (as `&Value`'s); any other
/// node is refused.
macro_rules! scalar_only {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            or_scalar!(self, visitor, $method, {})
        }
    )*};
}

impl<'de, 'a: 'de> Deserializer<'de> for &'de Node<'a> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Node::Scalar(v) => v.deserialize_any(visitor),
            Node::Str(s) => visitor.visit_borrowed_str(s),
            Node::Seq(items) => visit_seq(items, visitor),
            Node::Map(entries) => visit_map(entries, visitor),
        }
    }

    scalar_only! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64 deserialize_bool deserialize_unit
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Node::Scalar(Value::Null) => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self {
            Node::Scalar(v) => v.deserialize_enum(name, variants, visitor),
            // A unit variant, as `&Value` reads one (a mapping's variant: left to it).
            Node::Str(s) => visitor.visit_enum(s.as_ref().into_deserializer()),
            other => Err(other.invalid_type(&"a unit variant")),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        or_scalar!(self, visitor, deserialize_str, {
            Node::Str(s) => visitor.visit_borrowed_str(s),
        })
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        or_scalar!(self, visitor, deserialize_bytes, {
            Node::Str(s) => visitor.visit_borrowed_str(s),
            Node::Seq(items) => visit_seq(items, visitor),
        })
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        or_scalar!(self, visitor, deserialize_seq, {
            Node::Seq(items) => visit_seq(items, visitor),
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        or_scalar!(self, visitor, deserialize_map, {
            Node::Map(entries) => visit_map(entries, visitor),
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self {
            Node::Scalar(v) => v.deserialize_struct(name, fields, visitor),
            Node::Seq(items) => visit_seq(items, visitor),
            Node::Map(entries) => visit_map(entries, visitor),
            other => Err(other.invalid_type(&visitor)),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

/// A sequence's items to `visitor`, every one taken (as `&Value`'s).
fn visit_seq<'de, 'a: 'de, V: Visitor<'de>>(
    items: &'de [Node<'a>],
    visitor: V,
) -> Result<V::Value, Error> {
    let mut access = Items(items.iter());
    // Returned as the visitor made it: a typed value (a `Container` is ~2 KB) is
    // not moved out of its `Result` and into another.
    let seq = visitor.visit_seq(&mut access);
    if seq.is_ok() && access.0.len() != 0 {
        return Err(de::Error::invalid_length(
            items.len(),
            &"fewer elements in array",
        ));
    }
    seq
}

struct Items<'de, 'a>(std::slice::Iter<'de, Node<'a>>);

impl<'de, 'a: 'de> SeqAccess<'de> for Items<'de, 'a> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        match self.0.next() {
            Some(n) => seed.deserialize(n).map(Some),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

/// A mapping's entries to `visitor` in the order written, every one taken (as
/// `&Value`'s); keys are strings, as JSON's.
fn visit_map<'de, 'a: 'de, V: Visitor<'de>>(
    entries: &'de [(std::borrow::Cow<'a, str>, Node<'a>)],
    visitor: V,
) -> Result<V::Value, Error> {
    let mut access = Entries {
        entries: entries.iter(),
        value: None,
    };
    // Returned as the visitor made it (see `visit_seq`).
    let map = visitor.visit_map(&mut access);
    if map.is_ok() && access.entries.len() != 0 {
        return Err(de::Error::invalid_length(
            entries.len(),
            &"fewer elements in map",
        ));
    }
    map
}

struct Entries<'de, 'a> {
    entries: std::slice::Iter<'de, (std::borrow::Cow<'a, str>, Node<'a>)>,
    /// The value of the key just taken.
    value: Option<&'de Node<'a>>,
}

impl<'de, 'a: 'de> MapAccess<'de> for Entries<'de, 'a> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some(value);
        seed.deserialize(Key(key)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        match self.value.take() {
            Some(value) => seed.deserialize(value),
            None => Err(de::Error::custom("a value before its key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// A mapping's key: a string (read as a number, a boolean or anything else only
/// by `&Value`'s own key reader, which the caller falls back to).
struct Key<'de>(&'de str);

/// Refused for a key: any reading but as a string (or passed over).
macro_rules! not_as_key {
    ($($method:ident($($arg:ident: $ty:ty),*))*) => {$(
        fn $method<V: Visitor<'de>>(self, $(_: $ty,)* _visitor: V) -> Result<V::Value, Error> {
            Err(de::Error::custom(concat!("a key read by ", stringify!($method))))
        }
    )*};
}

impl<'de> Deserializer<'de> for Key<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_str(self.0)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        char str string identifier
    }

    not_as_key! {
        deserialize_bool() deserialize_i8() deserialize_i16() deserialize_i32()
        deserialize_i64() deserialize_i128() deserialize_u8() deserialize_u16()
        deserialize_u32() deserialize_u64() deserialize_u128() deserialize_f32()
        deserialize_f64() deserialize_bytes() deserialize_byte_buf() deserialize_option()
        deserialize_unit() deserialize_seq() deserialize_map()
        deserialize_unit_struct(name: &'static str)
        deserialize_newtype_struct(name: &'static str)
        deserialize_tuple(len: usize)
        deserialize_tuple_struct(name: &'static str, len: usize)
        deserialize_struct(name: &'static str, fields: &'static [&'static str])
        deserialize_enum(name: &'static str, variants: &'static [&'static str])
    }
}
