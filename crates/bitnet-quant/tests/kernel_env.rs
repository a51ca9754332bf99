//! `BITNET_KERNEL` handling. A file of its own: the variable is read once per process.

use bitnet_core::{Error, ThreadPool};
use bitnet_quant::formats::i2s::I2sMatrix;
use bitnet_quant::kernels::{gemv, Kernel, ENV_VAR};
use bitnet_quant::quantize::{quantize_row, ActScale};

#[test]
fn bad_kernel_variable_is_an_error_not_a_panic() {
    // The only test in this process, so no other thread reads the variable meanwhile.
    std::env::set_var(ENV_VAR, "sse9");
    let e = Kernel::from_env().unwrap_err().to_string();
    assert!(e.contains("BITNET_KERNEL=sse9") && e.contains("unknown kernel `sse9`"), "{e}");

    // `select` caches the first reading, error included; the kernels return it.
    assert!(Kernel::select().is_err());
    let m = I2sMatrix::from_ternary(&[1; 128], 1, 128, 1.0).unwrap();
    let r = gemv(&m, &[0; 128], ActScale::default(), &mut [0.0], &ThreadPool::new(1));
    assert!(matches!(r.unwrap_err().root(), Error::InvalidArgument(_)));
    assert!(quantize_row(&[1.0], &mut [0]).is_err());

    std::env::set_var(ENV_VAR, "Scalar");
    assert_eq!(Kernel::from_env().unwrap(), Kernel::Scalar);
    std::env::set_var(ENV_VAR, "auto");
    assert_eq!(Kernel::from_env().unwrap(), Kernel::detect());
    std::env::remove_var(ENV_VAR);
    assert_eq!(Kernel::from_env().unwrap(), Kernel::detect());
}
