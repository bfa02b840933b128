//! Page-based pagination in the orders API's shape: `{"page","page_size","total","total_pages"}`.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::problem::Problem;

pub const DEFAULT_PAGE_SIZE: u32 = 20;
/// Larger requests are clamped to this, not refused.
pub const MAX_PAGE_SIZE: u32 = 100;

#[derive(Debug, Clone, Copy, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// 1-based page number (default 1).
    #[param(minimum = 1)]
    pub page: Option<i64>,
    /// Items per page (default 20; values above 100 are clamped to 100).
    #[param(minimum = 1)]
    pub page_size: Option<i64>,
}

/// A validated page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub page: u32,
    pub page_size: u32,
}

impl PageParams {
    pub fn resolve(self) -> Result<Page, Problem> {
        let page = self.page.unwrap_or(1);
        let page_size = self.page_size.unwrap_or(i64::from(DEFAULT_PAGE_SIZE));
        if page < 1 {
            return Err(Problem::bad_request("page must be 1 or more"));
        }
        if page_size < 1 {
            return Err(Problem::bad_request("page_size must be 1 or more"));
        }
        Ok(Page {
            page: u32::try_from(page).unwrap_or(u32::MAX),
            page_size: u32::try_from(page_size.min(i64::from(MAX_PAGE_SIZE))).unwrap_or(MAX_PAGE_SIZE),
        })
    }
}

impl Page {
    /// Index of the first item of this page.
    pub fn offset(self) -> u64 {
        u64::from(self.page - 1) * u64::from(self.page_size)
    }

    pub fn describe(self, total: u64) -> Pagination {
        Pagination {
            page: self.page,
            page_size: self.page_size,
            total,
            total_pages: total.div_ceil(u64::from(self.page_size)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Pagination {
    pub page: u32,
    pub page_size: u32,
    pub total: u64,
    pub total_pages: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_clamping_and_refusals() {
        let page = PageParams::default().resolve().ok();
        assert_eq!(
            page,
            Some(Page {
                page: 1,
                page_size: 20
            })
        );
        let clamped = PageParams {
            page: Some(2),
            page_size: Some(1000),
        }
        .resolve()
        .ok();
        assert_eq!(
            clamped,
            Some(Page {
                page: 2,
                page_size: 100
            })
        );
        assert!(
            PageParams {
                page: Some(0),
                page_size: None
            }
            .resolve()
            .is_err()
        );
        assert!(
            PageParams {
                page: None,
                page_size: Some(-5)
            }
            .resolve()
            .is_err()
        );
    }

    #[test]
    fn describes_totals() {
        let page = Page {
            page: 3,
            page_size: 20,
        };
        assert_eq!(page.offset(), 40);
        assert_eq!(page.describe(45).total_pages, 3);
        assert_eq!(page.describe(0).total_pages, 0);
    }
}
