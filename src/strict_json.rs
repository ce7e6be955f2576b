//! JSON for the key zone's API (`noise_keys_api`) with one rule more than `serde_json`'s
//! `Value`: an object may not name a field twice. `serde_json` keeps the last of duplicates,
//! so `{"verdict":"allow","verdict":"deny"}` would be read as one of the two without a word;
//! an operator's write that says two things is refused instead (400), as the authority's
//! answer with a duplicate attribute is (`crate::core::auth_reply`).

#![forbid(unsafe_code)]

use serde::de::{Deserialize, Deserializer, Error, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Parses `bytes` as one JSON value whose objects name each field once.
pub fn parse(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice::<Strict>(bytes).map(|s| s.0)
}

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E: Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if out.contains_key(&name) {
                return Err(A::Error::custom(format!(
                    "the field \"{}\" is given twice",
                    name.escape_default()
                )));
            }
            let Strict(v) = map.next_value()?;
            out.insert(name, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn refuses_duplicates_at_every_depth_and_reads_the_rest_as_serde_json_does() {
        for ok in [
            r#"{"a":1,"b":[1,2,{"c":null}],"d":"x","e":1.5,"f":-3,"g":true}"#,
            "[]",
            "7",
        ] {
            assert_eq!(
                parse(ok.as_bytes()).unwrap(),
                serde_json::from_str::<serde_json::Value>(ok).unwrap()
            );
        }
        for dup in [
            r#"{"verdict":"allow","verdict":"deny"}"#,
            r#"{"attrs":{"a":"1","a":"2"}}"#,
            r#"[{"x":1,"x":1}]"#,
        ] {
            let e = parse(dup.as_bytes()).unwrap_err().to_string();
            assert!(e.contains("is given twice"), "{dup}: {e}");
        }
    }
}
