//! Data compiled into every binary, so the main commands run on a fresh
//! machine with no download: the reference palettes and a small real sample
//! of CIFAR-10 horses (see `assets/README.md`).

/// The first 500 training horses of CIFAR-10 (official records, in order).
pub const CIFAR_HORSE_TRAIN: &[u8] = include_bytes!("../../../assets/cifar10/horse_train_500.bin");
/// The first 100 test horses of CIFAR-10 (official records, in order).
pub const CIFAR_HORSE_TEST: &[u8] = include_bytes!("../../../assets/cifar10/horse_test_100.bin");
/// Reference 16-colour palette (k-means on horse pixels).
pub const PALETTE_16: &str = include_str!("../../../assets/palettes/kmeans16_cat7.txt");
/// Reference 24-colour palette (k-means on horse pixels), the study's default.
pub const PALETTE_24: &str = include_str!("../../../assets/palettes/kmeans24_cat7.txt");
/// Reference 32-colour palette (k-means on horse pixels).
pub const PALETTE_32: &str = include_str!("../../../assets/palettes/kmeans32_cat7.txt");
