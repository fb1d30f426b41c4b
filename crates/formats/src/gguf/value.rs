//! Metadata values.

/// GGUF metadata value type ids, as stored in the file.
pub mod value_type {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;

    /// Name of a value type id (`"u32"`, `"string"`, ...), `None` if unknown.
    pub const fn name(id: u32) -> Option<&'static str> {
        Some(match id {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            BOOL => "bool",
            STRING => "string",
            ARRAY => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
            _ => return None,
        })
    }

    /// Smallest number of bytes one value of this type occupies in a file
    /// (a string is at least its 8-byte length, an array at least its 4-byte
    /// element type and 8-byte length). `None` if the id is unknown.
    pub const fn min_encoded_size(id: u32) -> Option<u64> {
        Some(match id {
            U8 | I8 | BOOL => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | STRING => 8,
            ARRAY => 12,
            _ => return None,
        })
    }
}

/// One metadata value. Arrays may hold any type, including arrays.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The GGUF value type id of this value.
    pub const fn type_id(&self) -> u32 {
        match self {
            MetaValue::U8(_) => value_type::U8,
            MetaValue::I8(_) => value_type::I8,
            MetaValue::U16(_) => value_type::U16,
            MetaValue::I16(_) => value_type::I16,
            MetaValue::U32(_) => value_type::U32,
            MetaValue::I32(_) => value_type::I32,
            MetaValue::U64(_) => value_type::U64,
            MetaValue::I64(_) => value_type::I64,
            MetaValue::F32(_) => value_type::F32,
            MetaValue::F64(_) => value_type::F64,
            MetaValue::Bool(_) => value_type::BOOL,
            MetaValue::String(_) => value_type::STRING,
            MetaValue::Array(_) => value_type::ARRAY,
        }
    }

    /// Short type name: `"u8"`, `"i32"`, `"f64"`, `"bool"`, `"string"`, `"array"`, ...
    pub const fn type_name(&self) -> &'static str {
        match value_type::name(self.type_id()) {
            Some(n) => n,
            None => "unknown",
        }
    }

    /// Type description including the element type of arrays, e.g.
    /// `"array<string>"`, `"array<array<u8>>"`; `"array<>"` when empty.
    pub fn describe(&self) -> String {
        match self {
            MetaValue::Array(items) => match items.first() {
                Some(first) => format!("array<{}>", first.describe()),
                None => "array<>".to_string(),
            },
            other => other.type_name().to_string(),
        }
    }

    /// The value as a signed 128-bit integer, for any integer type.
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            MetaValue::U8(v) => v.into(),
            MetaValue::I8(v) => v.into(),
            MetaValue::U16(v) => v.into(),
            MetaValue::I16(v) => v.into(),
            MetaValue::U32(v) => v.into(),
            MetaValue::I32(v) => v.into(),
            MetaValue::U64(v) => v.into(),
            MetaValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// Integer values that are non-negative and fit in `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_i128().and_then(|v| u64::try_from(v).ok())
    }

    /// Integer values that fit in `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        self.as_i128().and_then(|v| i64::try_from(v).ok())
    }

    /// Floats and integers, converted to `f64` (large 64-bit integers round).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i128().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(items) => Some(items),
            _ => None,
        }
    }
}

macro_rules! meta_from {
    ($($t:ty => $v:ident),*) => {
        $(impl From<$t> for MetaValue {
            fn from(v: $t) -> MetaValue { MetaValue::$v(v) }
        })*
    };
}
meta_from!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32,
    u64 => U64, i64 => I64, f32 => F32, f64 => F64, bool => Bool, String => String);

impl From<&str> for MetaValue {
    fn from(v: &str) -> MetaValue {
        MetaValue::String(v.to_string())
    }
}

impl From<&String> for MetaValue {
    fn from(v: &String) -> MetaValue {
        MetaValue::String(v.clone())
    }
}

impl<T: Into<MetaValue>> From<Vec<T>> for MetaValue {
    fn from(v: Vec<T>) -> MetaValue {
        MetaValue::Array(v.into_iter().map(Into::into).collect())
    }
}

impl<T: Clone + Into<MetaValue>> From<&[T]> for MetaValue {
    fn from(v: &[T]) -> MetaValue {
        MetaValue::Array(v.iter().cloned().map(Into::into).collect())
    }
}
