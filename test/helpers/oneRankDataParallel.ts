/**
 * A DataParallelRank of one rank that sums its gradients through the communicator given (a fake, or NCCL on the
 * device): how the tests run the data-parallel path of a training run in one process.
 */
import { DataParallelRank, type DataParallelRankOptions } from '../../src/parallel/dataParallelRank.ts';
import type { Communicator } from '../../src/parallel/nccl/communicator.ts';
import { localTransports } from '../../src/runtime/localTransport.ts';

export function oneRankDataParallel(
  communicator: Communicator,
  o: Pick<DataParallelRankOptions, 'globalBatchSize' | 'microBatchSize'> & Partial<DataParallelRankOptions>,
): DataParallelRank {
  return new DataParallelRank({
    transport: localTransports(1)[0],
    dpRank: 0,
    dpSize: 1,
    group: [0],
    deviceIndex: 0,
    onStopAgreed: () => {},
    communicator,
    ...o,
  });
}
