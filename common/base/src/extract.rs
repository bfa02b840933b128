//! Extractors whose rejections are [`Problem`]s, so a malformed request gets the same
//! `application/problem+json` 400 as every other error instead of axum's plain-text default.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::problem::Problem;

/// JSON body. The `Content-Type` is not insisted on (clients post JSON with `curl -d`),
/// but the body must parse into `T`: anything else is a 400 naming the offending field.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| Problem::new(rejection.status(), "bad-request", rejection.body_text()))?;
        if bytes.is_empty() {
            return Err(Problem::bad_request(
                "Request body is empty; a JSON object was expected.",
            ));
        }
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(Problem::bad_request(rejection.body_text())),
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Path parameters; a parameter that does not parse is a 400.
#[derive(Debug, Clone)]
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => Err(Problem::bad_request(rejection.body_text())),
        }
    }
}

/// Query string; a parameter that does not parse is a 400.
#[derive(Debug, Clone, Default)]
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(rejection) => Err(Problem::bad_request(rejection.body_text())),
        }
    }
}

/// `#[serde(deserialize_with = "shopstack_base::extract::whole_number")]` for integer body
/// members: JSON Schema's `integer` admits `2.0` as well as `2`, so both are accepted; `1.5`
/// and out-of-range values are refused with the member named.
pub fn whole_number<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i128>,
{
    use serde::Deserialize as _;
    use serde::de::Error as _;
    let number = serde_json::Number::deserialize(deserializer)?;
    let whole = number
        .as_i64()
        .map(i128::from)
        .or_else(|| number.as_u64().map(i128::from))
        .or_else(|| {
            number
                .as_f64()
                .filter(|value| value.fract() == 0.0 && value.abs() < 9.0e18)
                .map(|value| value as i128)
        })
        .ok_or_else(|| D::Error::custom(format!("invalid value: {number}, expected a whole number")))?;
    T::try_from(whole).map_err(|_| D::Error::custom(format!("{number} is out of range")))
}

/// [`whole_number`] for an optional member (`null` or absent is `None`; pair it with
/// `#[serde(default)]`).
pub fn optional_whole_number<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i128>,
{
    #[derive(serde::Deserialize)]
    struct Whole<T: TryFrom<i128>>(#[serde(deserialize_with = "whole_number")] T);
    use serde::Deserialize as _;
    Ok(Option::<Whole<T>>::deserialize(deserializer)?.map(|Whole(value)| value))
}

#[cfg(test)]
mod tests {
    #[derive(Debug, serde::Deserialize)]
    struct Body {
        #[serde(deserialize_with = "super::whole_number")]
        n: u32,
    }

    fn parse(json: &str) -> Option<u32> {
        serde_json::from_str::<Body>(json).ok().map(|body| body.n)
    }

    #[test]
    fn whole_numbers_in_either_spelling() {
        assert_eq!(parse(r#"{"n": 7}"#), Some(7));
        assert_eq!(parse(r#"{"n": 7.0}"#), Some(7));
        assert_eq!(parse(r#"{"n": 7.5}"#), None);
        assert_eq!(parse(r#"{"n": -1}"#), None);
        assert_eq!(parse(r#"{"n": 1e30}"#), None);
        assert_eq!(parse(r#"{"n": "7"}"#), None);
    }
}
