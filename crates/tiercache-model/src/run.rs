//! Running the checker on a configuration and collecting what it found.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use stateright::{Checker, Expectation, HasDiscoveries, Model, Path};

use crate::config::ModelConfig;
use crate::model::{Action, CoherenceModel};
use crate::state::State;

/// How to explore the state space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Search {
    /// Breadth first: counterexamples are shortest.
    Bfs,
    /// Depth first: less memory for the same states.
    Dfs,
}

/// What one exhaustive run found.
#[derive(Debug)]
pub struct Outcome {
    /// The configuration checked.
    pub config: ModelConfig,
    /// Distinct states visited.
    pub unique_states: usize,
    /// States generated (with repeats).
    pub states: usize,
    /// The longest path explored.
    pub max_depth: usize,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// Whether the checker explored everything (it stops early only once
    /// every property has a discovery).
    pub complete: bool,
    /// Each property with a discovery: a counterexample for `always` and
    /// `eventually`, an example for `sometimes`.
    pub discoveries: BTreeMap<&'static str, Path<State, Action>>,
}

impl Outcome {
    /// The model this outcome is about.
    pub fn model(&self) -> CoherenceModel {
        CoherenceModel::new(self.config.clone())
    }

    /// The names of the `always` and `eventually` properties with a
    /// counterexample.
    pub fn violations(&self) -> Vec<&'static str> {
        let model = self.model();
        model
            .properties()
            .into_iter()
            .filter(|p| {
                p.expectation != Expectation::Sometimes && self.discoveries.contains_key(p.name)
            })
            .map(|p| p.name)
            .collect()
    }

    /// The names of the `sometimes` properties with no example.
    pub fn unreached(&self) -> Vec<&'static str> {
        self.model()
            .sanity_property_names()
            .into_iter()
            .filter(|n| !self.discoveries.contains_key(n))
            .collect()
    }

    /// The counterexample or example for `property`, explained step by step.
    pub fn explain(&self, property: &str) -> Option<String> {
        self.discoveries
            .get(property)
            .map(|path| self.model().explain(path))
    }

    /// One line: the configuration's size and the run's counts.
    pub fn summary(&self) -> String {
        let c = &self.config;
        format!(
            "{} instance(s), {} key(s), {} write(s), {} fault(s), bound {} / liveness {} / capped life {} / max delay {} tick(s), {} flight(s), engine {:?}, bus {:?}: {} unique states ({} generated, depth {}) in {:.2?}{}",
            c.instances,
            c.keys,
            c.writes,
            c.faults,
            c.bound,
            c.liveness,
            c.capped_life,
            c.max_delay,
            c.max_flights,
            c.engine,
            c.bus,
            self.unique_states,
            self.states,
            self.max_depth,
            self.elapsed,
            if self.complete { "" } else { " (INCOMPLETE)" }
        )
    }
}

/// Checks `config` exhaustively with `threads` checker threads.
pub fn check(config: &ModelConfig, search: Search, threads: usize) -> Outcome {
    let started = Instant::now();
    let builder = CoherenceModel::new(config.clone())
        .checker()
        .threads(threads.max(1));
    let (unique_states, states, max_depth, complete, found) = match search {
        Search::Bfs => collect(builder.spawn_bfs().join()),
        Search::Dfs => collect(builder.spawn_dfs().join()),
    };
    Outcome {
        config: config.clone(),
        unique_states,
        states,
        max_depth,
        elapsed: started.elapsed(),
        complete,
        discoveries: found,
    }
}

type Collected = (
    usize,
    usize,
    usize,
    bool,
    BTreeMap<&'static str, Path<State, Action>>,
);

fn collect(checker: impl Checker<CoherenceModel>) -> Collected {
    (
        checker.unique_state_count(),
        checker.state_count(),
        checker.max_depth(),
        checker.is_done(),
        checker.discoveries().into_iter().collect(),
    )
}

/// A short path to a discovery of `property` (a counterexample or an
/// example): breadth first on one thread, stopping after the first block of
/// states that has one, then cut at the first state that decides it (for
/// `always` and `sometimes`), so the path is as short as any, give or take
/// a step. `None` when the whole space has none.
pub fn find_trace(config: &ModelConfig, property: &'static str) -> Option<Path<State, Action>> {
    let model = CoherenceModel::new(ModelConfig {
        symmetry: false,
        ..config.clone()
    });
    let path = model
        .clone()
        .checker()
        .threads(1)
        .finish_when(HasDiscoveries::AnyOf([property].into_iter().collect()))
        .spawn_bfs()
        .join()
        .discovery(property)?;
    let Some(p) = model.properties().into_iter().find(|p| p.name == property) else {
        return Some(path);
    };
    let steps = path.clone().into_vec();
    let decides = |s: &State| match p.expectation {
        Expectation::Always => !(p.condition)(&model, s),
        Expectation::Sometimes => (p.condition)(&model, s),
        Expectation::Eventually => false,
    };
    let Some(cut) = steps.iter().position(|(s, _)| decides(s)) else {
        return Some(path);
    };
    let init = steps.first()?.0.clone();
    let actions: Vec<Action> = steps[..cut].iter().filter_map(|(_, a)| *a).collect();
    Path::from_actions(&model, init, actions.iter()).or(Some(path))
}
