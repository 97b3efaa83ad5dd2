"""CPC-SAM Segment Editor effect: point prompts on a slice view -> the selected segment.

Left click on a slice view: a foreground point of the class chosen for the selected segment;
Shift + left click: a background point (label 0). The points of the current slice accumulate (a
new slice, segment or class starts over). The slice is cut from the source volume along the IJK
axis closest to the view's normal (the IJK slice closest to the view), segmented by
``Predictor.predict_slice_with_points`` of a model trained by the CPC-SAM module, and written
into the selected segment for that slice only (undoable; the rest of the segment, earlier
results and manual painting, is kept). With "propagate", the neighbouring slices are segmented
in turn from the centre point of the previous slice's result until a prediction is empty or N
slices are done in each direction; this runs one slice per timer tick, so the GUI stays
responsive, shows the progress and can stop it.

The geometry, the propagation and the labelmap write are Qt-free and tested outside Slicer with
slicer-core: ``CPCSAMLib/slicer/effect_logic.py``.
"""

import logging
import os

import numpy as np
import qt
import slicer
import vtk
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect


# CPCSAMLib is importable here: installed, it sits in the scripted-modules folder, which Slicer puts
# on sys.path for every scripted module; from the source tree, the CPCSAM module (a dependency of
# SegmentEditorCPCSAM, so loaded first) puts the repository's top level on sys.path.
from CPCSAMLib.slicer import effect_logic  # noqa: E402
from CPCSAMLib.slicer import mrml as cpcsamMrml  # noqa: E402

__all__ = ["SegmentEditorEffect"]

PARAMETER_MODEL = "CPCSAM.ModelPath"
PARAMETER_CLASS = "CPCSAM.ClassName"
PARAMETER_PROPAGATE = "CPCSAM.Propagate"
PARAMETER_SLICES = "CPCSAM.PropagateSlices"
PARAMETER_DEVICE = "CPCSAM.Device"


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Point-prompted CPC-SAM segmentation of the selected segment."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "CPC-SAM"
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.session = effect_logic.PointPromptSession()
        self._predictor = None
        self._predictorKey = None
        self._classes = []
        self._classesModel = None
        self._lastSegmentName = None
        self._propagation = None  # running propagation: dict(steps, masks, write, total)
        self._propagationTimer = None

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        iconPath = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "Resources", "Icons", "SegmentEditorCPCSAM.png")
        if os.path.exists(iconPath):
            return qt.QIcon(iconPath)
        return qt.QIcon()

    def helpText(self):
        return """<html>Segment with a model trained by the CPC-SAM module, from point clicks.<br>
<b>Left click</b> on a slice view: foreground point of the chosen class for the selected segment.
<b>Shift + left click</b>: background point. Points on the same slice accumulate; the result of
that slice replaces the segment on that slice only (Undo restores it; other slices are kept).
With <i>Propagate</i>, the neighbouring slices are segmented too, each from the centre of the
previous slice's result (<i>Stop</i> ends it). The model defaults to the one trained last by the
CPC-SAM module.</html>"""

    # ------------------------------------------------------------------ options
    def setupOptionsFrame(self):
        import ctk

        self.modelPathEdit = ctk.ctkPathLineEdit()
        self.modelPathEdit.filters = ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Readable
        self.modelPathEdit.nameFilters = ["CPC-SAM model (*.pt)", "All files (*)"]
        self.modelPathEdit.settingKey = "CPCSAM/Model"
        self.modelPathEdit.toolTip = "A model trained by the CPC-SAM module (model_best.pt)."
        self.scriptedEffect.addLabeledOptionsWidget("Model:", self.modelPathEdit)

        self.classComboBox = qt.QComboBox()
        self.classComboBox.toolTip = ("Class of the model that the selected segment receives. Chosen "
                                      "automatically when a class has the segment's name.")
        self.scriptedEffect.addLabeledOptionsWidget("Class:", self.classComboBox)

        self.deviceComboBox = qt.QComboBox()
        self.deviceComboBox.addItems(["auto", "cpu", "cuda"])
        self.deviceComboBox.toolTip = "auto: the GPU when PyTorch sees one, else the CPU."
        self.scriptedEffect.addLabeledOptionsWidget("Device:", self.deviceComboBox)

        self.propagateCheckBox = qt.QCheckBox("Propagate to neighbouring slices")
        self.propagateCheckBox.toolTip = ("Segment the next slices on both sides too, each prompted with the "
                                          "centre point of the previous slice's result, until the result is "
                                          "empty or the number of slices is reached.")
        self.slicesSpinBox = qt.QSpinBox()
        self.slicesSpinBox.setRange(1, 500)
        self.slicesSpinBox.toolTip = "Maximum number of slices in each direction."
        propagateLayout = qt.QHBoxLayout()
        propagateLayout.addWidget(self.propagateCheckBox)
        propagateLayout.addWidget(qt.QLabel("slices:"))
        propagateLayout.addWidget(self.slicesSpinBox)
        self.scriptedEffect.addOptionsWidget(propagateLayout)

        self.resetPointsButton = qt.QPushButton("Clear points")
        self.resetPointsButton.toolTip = "Forget the points of the current slice (the segment is not changed)."
        self.stopButton = qt.QPushButton("Stop")
        self.stopButton.toolTip = "Stop the propagation (the slices done so far are kept)."
        self.stopButton.enabled = False
        buttonsLayout = qt.QHBoxLayout()
        buttonsLayout.addWidget(self.resetPointsButton)
        buttonsLayout.addWidget(self.stopButton)
        self.scriptedEffect.addOptionsWidget(buttonsLayout)
        self.progressBar = qt.QProgressBar()
        self.progressBar.visible = False
        self.scriptedEffect.addOptionsWidget(self.progressBar)
        self.statusLabel = qt.QLabel("")
        self.statusLabel.wordWrap = True
        self.scriptedEffect.addOptionsWidget(self.statusLabel)
        self._propagationTimer = qt.QTimer()
        self._propagationTimer.setInterval(0)
        self._propagationTimer.connect("timeout()", self._propagateOneSlice)

        self.modelPathEdit.connect("currentPathChanged(QString)", self.updateMRMLFromGUI)
        self.classComboBox.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.deviceComboBox.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.propagateCheckBox.connect("toggled(bool)", self.updateMRMLFromGUI)
        self.slicesSpinBox.connect("valueChanged(int)", self.updateMRMLFromGUI)
        self.resetPointsButton.connect("clicked()", self.session.reset)
        self.stopButton.connect("clicked()", self._finishPropagation)

    def setMRMLDefaults(self):
        self.scriptedEffect.setParameterDefault(PARAMETER_MODEL, "")
        self.scriptedEffect.setParameterDefault(PARAMETER_CLASS, "")
        self.scriptedEffect.setParameterDefault(PARAMETER_PROPAGATE, 0)
        self.scriptedEffect.setParameterDefault(PARAMETER_SLICES, 10)
        self.scriptedEffect.setParameterDefault(PARAMETER_DEVICE, "auto")

    def activate(self):
        # the model trained last by the CPC-SAM module (it adds each model to this path history)
        self.modelPathEdit.retrieveHistory()
        history = qt.QSettings().value("ctkPathLineEdit/CPCSAM/Model") or []
        if isinstance(history, str):  # a one-entry list reads back as a string
            history = [history]
        current = self.scriptedEffect.parameter(PARAMETER_MODEL)
        chosen = effect_logic.pick_model(current, list(history))
        if chosen and chosen != current:
            self.scriptedEffect.setParameter(PARAMETER_MODEL, chosen)

    def deactivate(self):
        self._finishPropagation()
        self.session.reset()

    def _loadClasses(self, modelPath):
        if modelPath == self._classesModel:
            return
        self._classesModel = modelPath
        self._classes = []
        if modelPath and os.path.isfile(modelPath):
            try:
                self._classes = cpcsamMrml.model_classes(modelPath)
            except Exception:  # noqa: BLE001 - fall back to the checkpoint's card (needs torch)
                try:
                    from CPCSAMLib.checkpoint import load_checkpoint

                    card = load_checkpoint(modelPath)["model_card"]
                    self._classes = [{"name": c["name"], "value": c["value"]} for c in card["classes"]]
                except Exception as exc:  # noqa: BLE001
                    logging.warning(f"CPC-SAM: cannot read the classes of {modelPath}: {exc}")
        wasBlocked = self.classComboBox.blockSignals(True)
        self.classComboBox.clear()
        for c in self._classes:
            self.classComboBox.addItem(c["name"])
        self.classComboBox.blockSignals(wasBlocked)

    def updateGUIFromMRML(self):
        modelPath = self.scriptedEffect.parameter(PARAMETER_MODEL)
        for widget in (self.modelPathEdit, self.classComboBox, self.deviceComboBox, self.propagateCheckBox,
                       self.slicesSpinBox):
            widget.blockSignals(True)
        try:
            self.modelPathEdit.currentPath = modelPath
            self._loadClasses(modelPath)
            className = self.scriptedEffect.parameter(PARAMETER_CLASS)
            segmentName = self._selectedSegmentName()
            names = [c["name"] for c in self._classes]
            if segmentName != self._lastSegmentName:
                # a newly selected segment named after a class gets that class
                self._lastSegmentName = segmentName
                if segmentName in names:
                    className = segmentName
            self.classComboBox.setCurrentIndex(names.index(className) if className in names else 0)
            self.deviceComboBox.setCurrentIndex(max(0, self.deviceComboBox.findText(
                self.scriptedEffect.parameter(PARAMETER_DEVICE))))
            self.propagateCheckBox.checked = self.scriptedEffect.integerParameter(PARAMETER_PROPAGATE) != 0
            self.slicesSpinBox.value = self.scriptedEffect.integerParameter(PARAMETER_SLICES)
            self.slicesSpinBox.enabled = self.propagateCheckBox.checked
        finally:
            for widget in (self.modelPathEdit, self.classComboBox, self.deviceComboBox, self.propagateCheckBox,
                           self.slicesSpinBox):
                widget.blockSignals(False)
        if not modelPath:
            self.statusLabel.text = "Choose a model trained by the CPC-SAM module."
        elif not self._classes:
            self.statusLabel.text = "The model's classes could not be read."
        else:
            self.statusLabel.text = "Click on a slice view (Shift+click: background point)."

    def updateMRMLFromGUI(self, *args):
        self.scriptedEffect.setParameter(PARAMETER_MODEL, self.modelPathEdit.currentPath)
        if self.classComboBox.currentIndex >= 0:
            self.scriptedEffect.setParameter(PARAMETER_CLASS, self.classComboBox.currentText)
        self.scriptedEffect.setParameter(PARAMETER_DEVICE, self.deviceComboBox.currentText)
        self.scriptedEffect.setParameter(PARAMETER_PROPAGATE, 1 if self.propagateCheckBox.checked else 0)
        self.scriptedEffect.setParameter(PARAMETER_SLICES, self.slicesSpinBox.value)

    def _selectedSegmentName(self):
        parameterSetNode = self.scriptedEffect.parameterSetNode()
        if parameterSetNode is None or parameterSetNode.GetSegmentationNode() is None:
            return None
        segment = parameterSetNode.GetSegmentationNode().GetSegmentation().GetSegment(
            parameterSetNode.GetSelectedSegmentID() or "")
        return segment.GetName() if segment is not None else None

    # ------------------------------------------------------------------ interaction
    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if viewWidget.className() != "qMRMLSliceWidget" or eventId != vtk.vtkCommand.LeftButtonPressEvent:
            return False
        if callerInteractor.GetControlKey() or callerInteractor.GetAltKey():
            return False  # leave Ctrl/Alt clicks to Slicer
        if self._propagation is not None:
            self.statusLabel.text = "Propagation is running: wait for it or press Stop."
            return True
        foreground = not callerInteractor.GetShiftKey()
        xy = callerInteractor.GetEventPosition()
        try:
            with slicer.util.WaitCursor():
                self.segmentFromClick(viewWidget, xy, foreground)
        except Exception as exc:  # noqa: BLE001 - shown to the user, the event is consumed
            logging.exception("CPC-SAM effect failed")
            slicer.util.errorDisplay(f"CPC-SAM: {exc}")
        return True

    def _sourceImage(self):
        return self.scriptedEffect.sourceVolumeImageData()  # Slicer >= 5.2 (5.8 is the oldest supported)

    def _predictorFor(self, modelPath, device):
        key = (modelPath, device, os.path.getmtime(modelPath))
        if self._predictorKey != key:
            from CPCSAMLib.infer import Predictor

            self.statusLabel.text = "Loading the model..."
            slicer.app.processEvents()
            self._predictor = Predictor.from_checkpoint(modelPath, device=device)
            self._predictorKey = key
        return self._predictor

    @staticmethod
    def _matrixToArray(vtkMatrix):
        return np.array([[vtkMatrix.GetElement(r, c) for c in range(4)] for r in range(4)])

    def _worldToSegmentation(self, segmentationNode, ras, normal):
        """RAS point and normal from world coordinates into the segmentation's frame."""
        transformNode = segmentationNode.GetParentTransformNode()
        if transformNode is None:
            return ras, normal
        transform = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, transformNode, transform)
        local = transform.TransformPoint(ras)
        localNormal = transform.TransformVectorAtPoint(ras, normal)
        return np.array(local), np.array(localNormal)

    def segmentFromClick(self, viewWidget, xy, foreground=True):
        parameterSetNode = self.scriptedEffect.parameterSetNode()
        segmentationNode = parameterSetNode.GetSegmentationNode()
        segmentId = parameterSetNode.GetSelectedSegmentID()
        modelPath = self.scriptedEffect.parameter(PARAMETER_MODEL)
        if not modelPath or not os.path.isfile(modelPath):
            raise ValueError("choose a trained model file (model_best.pt) first")
        self._loadClasses(modelPath)
        className = self.classComboBox.currentText
        names = [c["name"] for c in self._classes]
        if className not in names:
            raise ValueError("choose the class for the selected segment")
        classIndex = names.index(className) + 1  # class indices 1..C in the model's order

        source = self._sourceImage()
        if source is None or source.GetPointData() is None or source.GetPointData().GetScalars() is None:
            raise ValueError("select a source volume in the Segment Editor")
        from vtk.util import numpy_support

        dims = source.GetDimensions()
        comps = source.GetNumberOfScalarComponents()
        volume = numpy_support.vtk_to_numpy(source.GetPointData().GetScalars())
        volume = volume.reshape((dims[2], dims[1], dims[0]) + ((comps,) if comps > 1 else ()))
        if comps > 1:  # RGB: luminance
            volume = volume[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        extent = source.GetExtent()
        origin = (extent[0], extent[2], extent[4])
        imageToWorld = vtk.vtkMatrix4x4()
        source.GetImageToWorldMatrix(imageToWorld)
        ijkToRas = self._matrixToArray(imageToWorld)

        sliceNode = viewWidget.sliceLogic().GetSliceNode()
        xyToRas = self._matrixToArray(sliceNode.GetXYToRAS())
        ras = (xyToRas @ np.array([xy[0], xy[1], 0.0, 1.0]))[:3]
        normal = self._matrixToArray(sliceNode.GetSliceToRAS())[:3, 2]
        ras, normal = self._worldToSegmentation(segmentationNode, ras, normal)

        located = effect_logic.locate_click(ijkToRas, ras, normal, volume.shape, origin)
        if located is None:
            raise ValueError("the click is outside the source volume")
        axis, index, (x, y) = located

        key = (segmentationNode.GetID(), segmentId, axis, index, classIndex, modelPath)
        points = self.session.add(key, x, y, classIndex, foreground)
        if not self.session.has_foreground():
            self.statusLabel.text = "Background point kept; click inside the structure to add a foreground point."
            return

        if not self.scriptedEffect.confirmCurrentSegmentVisible():
            return  # the user did not confirm editing a hidden segment

        predictor = self._predictorFor(modelPath, self.scriptedEffect.parameter(PARAMETER_DEVICE) or "auto")
        mask = effect_logic.predict_mask(predictor.predict_slice_with_points,
                                         effect_logic.extract_slice(volume, axis, index), points, classIndex)
        imageToWorld = vtk.vtkMatrix4x4()
        source.GetImageToWorldMatrix(imageToWorld)
        abstractEffect = slicer.qSlicerSegmentEditorAbstractEffect

        def write(masks):
            # replaces the segment on these slices only; the rest of the segment is kept
            effect_logic.write_slices_to_segment(
                lambda modifier, mode, extent: self.scriptedEffect.modifySelectedSegmentByLabelmap(
                    modifier, mode, list(extent)),
                abstractEffect.ModificationModeRemove, abstractEffect.ModificationModeAdd,
                volume.shape, axis, masks, origin, imageToWorld)

        self.scriptedEffect.saveStateForUndo()
        write({index: mask})
        self.statusLabel.text = (f"{len(points)} point(s) on slice {index}: "
                                 + ("segmented." if mask.any() else "nothing found."))
        slices = self.scriptedEffect.integerParameter(PARAMETER_SLICES) \
            if self.scriptedEffect.integerParameter(PARAMETER_PROPAGATE) else 0
        if slices > 0 and mask.any():
            steps = effect_logic.propagation_steps(predictor.predict_slice_with_points, volume, axis, index,
                                                   mask, classIndex, slices)
            self._propagation = {"steps": steps, "masks": {}, "write": write, "total": 2 * slices,
                                 "tried": 0, "index": index}
            self.progressBar.setRange(0, 2 * slices)
            self.progressBar.value = 0
            self.progressBar.visible = True
            self.stopButton.enabled = True
            self._propagationTimer.start()

    def _propagateOneSlice(self):
        """One model call per timer tick: the GUI stays responsive during a long propagation."""
        state = self._propagation
        if state is None:
            self._propagationTimer.stop()
            return
        try:
            index, mask = next(state["steps"])
        except StopIteration:
            self._finishPropagation()
            return
        except Exception as exc:  # noqa: BLE001 - shown to the user
            logging.exception("CPC-SAM propagation failed")
            self._finishPropagation()
            slicer.util.errorDisplay(f"CPC-SAM propagation: {exc}")
            return
        state["masks"][index] = mask
        state["tried"] += 1
        self.progressBar.value = min(state["tried"], state["total"])
        self.statusLabel.text = f"Propagating from slice {state['index']}: slice {index} ({len(state['masks'])} done)..."

    def _finishPropagation(self):
        """Write the propagated slices (one undoable step) and end the propagation."""
        if self._propagationTimer is not None:
            self._propagationTimer.stop()
        state, self._propagation = self._propagation, None
        if hasattr(self, "stopButton"):
            self.stopButton.enabled = False
            self.progressBar.visible = False
        if state is None or not state["masks"]:
            return
        masks = state["masks"]
        self.scriptedEffect.saveStateForUndo()
        state["write"](masks)
        self.statusLabel.text = (f"Slice {state['index']} and {len(masks)} propagated slice(s) "
                                 f"({min(masks)}..{max(masks)}) segmented.")
