//! Tensor shapes.

use crate::{Error, Result};
use std::fmt;

/// The dimensions of a tensor, outermost first (row-major).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    /// A shape from its dimensions.
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }
    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    /// Total number of elements, or an error on overflow.
    pub fn checked_elem_count(&self) -> Result<usize> {
        self.0.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| {
            Error::shape(format!("shape {self} has more elements than fit in usize"))
        })
    }
    /// Total number of elements (panics only on overflow, which `checked_elem_count` reports).
    pub fn elem_count(&self) -> usize {
        self.0.iter().product()
    }
    /// The dims as a `[rows, cols]` matrix, or an error for other ranks.
    pub fn as_matrix(&self) -> Result<(usize, usize)> {
        match self.0.as_slice() {
            [r, c] => Ok((*r, *c)),
            _ => Err(Error::shape(format!("expected a matrix, got shape {self}"))),
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Self {
        Shape(d)
    }
}
impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Self {
        Shape(d.to_vec())
    }
}
impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Self {
        Shape(d.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_prints() {
        let s = Shape::from([2, 3, 4]);
        assert_eq!(s.elem_count(), 24);
        assert_eq!(s.to_string(), "[2, 3, 4]");
        assert!(s.as_matrix().is_err());
        assert_eq!(Shape::from([5, 7]).as_matrix().unwrap(), (5, 7));
    }

    #[test]
    fn overflow_is_an_error_not_a_panic() {
        assert!(Shape::from([usize::MAX, 2]).checked_elem_count().is_err());
    }
}
