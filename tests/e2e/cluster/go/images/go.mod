// Tiny static programs for the local cluster's images (standard library only):
// pause (the sandbox image), testapp (the first test image) and mkimage (assembles a
// docker-archive tarball that `ctr images import` loads, without any registry).
module kinfer.local/e2e/cluster/images

go 1.24.0
