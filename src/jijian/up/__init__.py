"""`jijian up`'s build system: stages with declared inputs and outputs, manifests of content hashes, a runner."""
