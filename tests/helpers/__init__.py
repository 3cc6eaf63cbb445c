"""Helpers of the test suite (kernel state snapshots, network library calls in a
namespace, images, old stores, runc, segment files); imported as `helpers.<name>`."""
