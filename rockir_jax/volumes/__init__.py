"""3-D micro-CT volumes to a training set: readers, slicing, physical properties, the data set writer."""
