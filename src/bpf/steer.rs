//! Typed access to the uplink steering maps: where new flows of each class go,
//! which uplinks are usable, and what the LAN hooks counted per uplink.

use aya::maps::{Array, MapData, PerCpuArray};

use super::abi::{Steer, UplinkCounters, UplinkState, MAX_UPLINKS};
use super::maps::map_err;
use super::{BpfError, Datapath};

const MAP_CLASS_UPLINKS: &str = "class_uplinks";
const MAP_UPLINK_STATE: &str = "uplink_state";
const MAP_UPLINK_COUNTERS: &str = "uplink_counters";

impl Datapath {
    /// Write the steering entries, `(class id, entry)`; class id 0 is the
    /// default policy for unclassified flows. Entries not given are left alone.
    pub fn set_steering(&mut self, entries: &[(u32, Steer)]) -> Result<(), BpfError> {
        let mut map: Array<&mut MapData, Steer> =
            Array::try_from(self.map_data_mut(MAP_CLASS_UPLINKS)?).map_err(map_err(MAP_CLASS_UPLINKS))?;
        for (class, steer) in entries {
            map.set(*class, *steer, 0).map_err(map_err(MAP_CLASS_UPLINKS))?;
        }
        Ok(())
    }

    /// The steering entry of one class (tests, status).
    pub fn steering(&self, class: u32) -> Result<Steer, BpfError> {
        let map: Array<&MapData, Steer> =
            Array::try_from(self.map_data(MAP_CLASS_UPLINKS)?).map_err(map_err(MAP_CLASS_UPLINKS))?;
        map.get(&class, 0).map_err(map_err(MAP_CLASS_UPLINKS))
    }

    /// Mark uplink `index` (0-based, config order) usable or not. Flows pinned to
    /// an unusable uplink are steered again at their next packet.
    pub fn set_uplink_usable(&mut self, index: usize, usable: bool) -> Result<(), BpfError> {
        let mut map: Array<&mut MapData, UplinkState> =
            Array::try_from(self.map_data_mut(MAP_UPLINK_STATE)?).map_err(map_err(MAP_UPLINK_STATE))?;
        let key = uplink_key(index)?;
        map.set(key, UplinkState { usable: u32::from(usable), pad: 0 }, 0)
            .map_err(map_err(MAP_UPLINK_STATE))
    }

    /// What the datapath counted for uplink `index`, summed over CPUs.
    pub fn uplink_counters(&self, index: usize) -> Result<UplinkCounters, BpfError> {
        let map: PerCpuArray<&MapData, UplinkCounters> =
            PerCpuArray::try_from(self.map_data(MAP_UPLINK_COUNTERS)?).map_err(map_err(MAP_UPLINK_COUNTERS))?;
        let values = map.get(&uplink_key(index)?, 0).map_err(map_err(MAP_UPLINK_COUNTERS))?;
        let mut sum = UplinkCounters::default();
        values.iter().for_each(|v| sum.add(v));
        Ok(sum)
    }
}

fn uplink_key(index: usize) -> Result<u32, BpfError> {
    if index >= MAX_UPLINKS {
        return Err(BpfError::Rules(format!(
            "uplink number {} is beyond the {MAX_UPLINKS} the flow mark can carry",
            index + 1
        )));
    }
    Ok(index as u32 + 1)
}
