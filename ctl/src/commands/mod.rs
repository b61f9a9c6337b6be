//! One module per verb. Commands use the helpers beside this folder (`daemon`, `fallback`,
//! `nodes`, `output`, `report`, …) and never each other.

pub mod atoms;
pub mod backup;
pub mod bundle;
pub mod clean;
pub mod completions;
pub mod deploy;
pub mod install_service;
pub mod k8s;
pub mod logs;
pub mod restart;
pub mod soak;
pub mod status;
pub mod stop;
pub mod storage;
pub mod supervisor;
pub mod top;
pub mod watch;
pub mod world;
