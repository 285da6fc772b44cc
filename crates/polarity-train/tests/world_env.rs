//! `world_from_env`: what an MPI launcher's variables make of this process (one test: it writes the environment).

use polarity_train::{TrainError, WORLD_SIZE_VARIABLES, world_from_env};

fn set(variable: &str, value: Option<&str>) {
    // SAFETY: the only test of this binary; nothing else reads or writes the environment meanwhile.
    unsafe {
        for other in WORLD_SIZE_VARIABLES {
            std::env::remove_var(other);
        }
        if let Some(value) = value {
            std::env::set_var(variable, value);
        }
    }
}

fn error(variable: &str, value: &str) -> String {
    set(variable, Some(value));
    match world_from_env() {
        Err(error @ TrainError::Collective { .. }) => error.to_string(),
        other => panic!("{variable}={value}: expected an error, got {other:?}"),
    }
}

#[test]
fn the_launchers_variables_decide_the_world() {
    set("", None);
    let world = world_from_env().unwrap();
    assert_eq!((world.rank(), world.world_size()), (0, 1));
    for variable in WORLD_SIZE_VARIABLES {
        set(variable, Some("1"));
        assert_eq!(world_from_env().unwrap().world_size(), 1, "{variable}=1 is one process");
        let message = error(variable, "two");
        assert!(message.contains(variable) && message.contains("\"two\""), "{message}");
        if cfg!(not(feature = "mpi")) {
            let message = error(variable, "2");
            assert!(message.contains("2 ranks") && message.contains("--features mpi"), "{message}");
        }
    }
    set("", None);
}
