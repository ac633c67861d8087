//! The small seeds the streaming request reader fills reused buffers with: string fields, a
//! `shape`, and the `outputs` list (names and binary flags).

use std::fmt;

use serde::{
    Deserialize,
    de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor},
};
use serde_json::value::RawValue;

use super::request::{Decoded, ListLimit, RankLimit, TensorsLimit, raw_bool};

#[derive(Deserialize, Default)]
struct OutputParams<'a> {
    #[serde(borrow, default)]
    binary_data: Option<&'a RawValue>,
}

/// The fields of an output object.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum OutputField {
    Name,
    Parameters,
    #[serde(other)]
    Other,
}

/// A string value appended to a reused buffer (borrowed or escaped alike); `nullable` also
/// takes `null` (the value is then absent: `false`).
pub(super) struct StrInto<'o> {
    pub(super) out: &'o mut String,
    pub(super) nullable: bool,
}

impl<'de> DeserializeSeed<'de> for StrInto<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        if self.nullable {
            d.deserialize_option(self)
        } else {
            d.deserialize_str(self)
        }
    }
}

impl<'de> Visitor<'de> for StrInto<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        self.out.clear();
        self.out.push_str(v);
        Ok(true)
    }

    fn visit_none<E: de::Error>(self) -> Result<bool, E> {
        self.out.clear();
        Ok(false)
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        self.visit_none()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

/// A `shape`, into a reused vector, at most [`MAX_RANK`] dimensions.
pub(super) struct ShapeInto<'o>(pub(super) &'o mut Vec<i64>);

impl<'de> DeserializeSeed<'de> for ShapeInto<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ShapeInto<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        RankLimit::expecting(f)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.clear();
        while let Some(d) = seq.next_element::<i64>()? {
            if self.0.len() >= RankLimit::MAX {
                return Err(RankLimit::too_many());
            }
            self.0.push(d);
        }
        Ok(())
    }
}

/// The `outputs` array: names (and binary flags) into reused buffers.
pub(super) struct Outputs<'d> {
    pub(super) into: &'d mut Decoded,
}

impl<'de> DeserializeSeed<'de> for Outputs<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Outputs<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        TensorsLimit::expecting(f)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let d = self.into;
        let mut n = 0usize;
        loop {
            if d.outputs.len() <= n {
                d.outputs.push(String::new());
            }
            if d.binary.len() <= n {
                d.binary.push(false);
            }
            let (Some(name), Some(binary)) = (d.outputs.get_mut(n), d.binary.get_mut(n)) else {
                return Err(de::Error::custom("output slot missing"));
            };
            if seq.next_element_seed(Output { name, binary })?.is_none() {
                break;
            }
            n = n.saturating_add(1);
            if n > TensorsLimit::MAX {
                return Err(TensorsLimit::too_many());
            }
        }
        d.n_outputs = n;
        Ok(())
    }
}

/// One output object.
struct Output<'o> {
    name: &'o mut String,
    binary: &'o mut bool,
}

impl<'de> DeserializeSeed<'de> for Output<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Output<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an output object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut named = false;
        *self.binary = false;
        while let Some(field) = map.next_key::<OutputField>()? {
            match field {
                OutputField::Name => {
                    named = map.next_value_seed(StrInto {
                        out: &mut *self.name,
                        nullable: false,
                    })?;
                }
                OutputField::Parameters => {
                    let p: Option<OutputParams<'de>> = map.next_value()?;
                    *self.binary = raw_bool(p.and_then(|p| p.binary_data));
                }
                OutputField::Other => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        if named {
            Ok(())
        } else {
            Err(de::Error::missing_field("name"))
        }
    }
}
