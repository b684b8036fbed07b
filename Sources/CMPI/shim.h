// Swift cannot import MPI's handle macros (MPI_COMM_WORLD, MPI_FLOAT, MPI_IN_PLACE are casts of
// addresses of globals in OpenMPI), so every MPI call Swift needs is wrapped here over plain C
// types. Only the Cluster target imports this, and only with the package trait MPI on.
#ifndef SLORAGPU_CMPI_SHIM_H
#define SLORAGPU_CMPI_SHIM_H

#include <mpi.h>
#include <stdint.h>

/// Returns the thread level provided (MPI_THREAD_MULTIPLE is 3 in OpenMPI and MPICH), or -1.
static inline int sloragpu_mpi_init(void) {
    int provided = -1;
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS) return -1;
    // Errors return codes instead of aborting inside MPI, so the caller can name what failed;
    // every caller then ends the job with sloragpu_mpi_abort.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    return provided;
}

static inline int sloragpu_mpi_initialized(void) {
    int flag = 0;
    MPI_Initialized(&flag);
    return flag;
}

static inline int sloragpu_mpi_rank(void) {
    int rank = -1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    return rank;
}

static inline int sloragpu_mpi_size(void) {
    int size = -1;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    return size;
}

/// Ranks on this node (a communicator split by shared memory), and this rank among them.
static inline int sloragpu_mpi_local_rank(int *local_size) {
    MPI_Comm local;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local) != MPI_SUCCESS) return -1;
    int rank = -1;
    MPI_Comm_rank(local, &rank);
    MPI_Comm_size(local, local_size);
    MPI_Comm_free(&local);
    return rank;
}

/// Every rank's `count` floats, concatenated in rank order into `gathered` (size * count).
static inline int sloragpu_mpi_allgather_floats(const float *local, float *gathered, int count) {
    return MPI_Allgather(local, count, MPI_FLOAT, gathered, count, MPI_FLOAT, MPI_COMM_WORLD);
}

static inline int sloragpu_mpi_allgather_doubles(const double *local, double *gathered, int count) {
    return MPI_Allgather(local, count, MPI_DOUBLE, gathered, count, MPI_DOUBLE, MPI_COMM_WORLD);
}

static inline int sloragpu_mpi_broadcast_bytes(void *bytes, int count, int root) {
    return MPI_Bcast(bytes, count, MPI_BYTE, root, MPI_COMM_WORLD);
}

static inline int sloragpu_mpi_broadcast_int64(int64_t *value, int root) {
    return MPI_Bcast(value, 1, MPI_INT64_T, root, MPI_COMM_WORLD);
}

static inline int sloragpu_mpi_barrier(void) { return MPI_Barrier(MPI_COMM_WORLD); }

static inline void sloragpu_mpi_abort(int code) { MPI_Abort(MPI_COMM_WORLD, code); }

static inline int sloragpu_mpi_finalize(void) { return MPI_Finalize(); }

#endif
