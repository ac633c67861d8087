// Wrapper module that builds the etcd server binary (package main of go.etcd.io/etcd/server/v3).
module kinfer.local/e2e/cluster/etcd

go 1.24.0

require go.etcd.io/etcd/server/v3 v3.6.4
