//! Hardware task switching (being written).
