"""Pure numpy over one step table (steps x layers): statistics, outliers, roofline placement, diff."""
