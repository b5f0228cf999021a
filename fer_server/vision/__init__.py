"""Vision: the Haar face detector, crops and drawing, the face tracker, and the per-frame
pipeline that ties them to a classifier."""
